r"""Progress of every long job: one helper on tqdm, with rate and ETA, quiet when not a TTY.

Both trainers, import / export, the corpus shard jobs, tokenize, decode, score and the ablation
sweep report progress through :func:`bar`, so every tool looks and behaves the same. On a terminal
the bar is redrawn in place (at most ~10 times a second); when stderr is a file or a pipe (a pod
log, CI) it prints one plain line per ``interval`` seconds instead of a stream of ``\\r``
redraws, so logs stay readable. :func:`timed` announces a slow single step (the first compile of a
9B train step, a checkpoint restore) and prints its time when it ends.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_INTERVAL = 30.0  # seconds between plain lines when not on a terminal


class _Lines(io.TextIOBase):
    """A stream for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, s: str) -> int:
        text = s.replace("\r", "").strip()
        if text:
            self._stream.write(text + "\n")
            self._stream.flush()
        return len(s)

    def flush(self) -> None:
        self._stream.flush()


def _on_tty(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def bar(
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    *,
    enabled: bool = True,
    unit_scale: bool = False,
    initial: float = 0,
    interval: float | None = None,
    stream=None,
) -> tqdm:
    """A progress bar with count, rate and ETA (``total`` None: count and rate only).

    Args:
      total: units of work in all (items, bytes, steps, cells x stages).
      desc: what runs, e.g. ``"import glm-4-9b"``.
      unit: the unit's name.
      unit_scale: True shows large counts as k/M/G (``unit="B"``: kB/MB/GB).
      enabled: False gives a bar that prints nothing (``--noprogress``, worker processes).
      initial: units already done (a resumed job).
      interval: seconds between plain lines when not on a terminal (default ``LOG_INTERVAL``).
      stream: where to print (default stderr).
    """
    stream = stream or sys.stderr
    tty = _on_tty(stream)
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        initial=initial,
        disable=not enabled,
        file=stream if tty else _Lines(stream),
        mininterval=0.1 if tty else (LOG_INTERVAL if interval is None else interval),
        maxinterval=float("inf") if not tty else 10.0,
        dynamic_ncols=tty,
        ascii=not tty,
        leave=True,
        smoothing=0.1,
    )


def track(items: Iterable[T], total: float | None = None, desc: str = "", **kwargs: Any):
    """Iterates over ``items`` with a :func:`bar` showing rate and ETA."""
    with bar(total if total is not None else _len(items), desc, **kwargs) as b:
        for x in items:
            yield x
            b.update(1)


def _len(items) -> int | None:
    try:
        return len(items)
    except TypeError:
        return None


@contextlib.contextmanager
def timed(what: str, *, enabled: bool = True, stream=None) -> Iterator[None]:
    """Prints ``"{what} …"`` now and ``"{what}: done in N s"`` when the block ends."""
    stream = stream or sys.stderr
    t0 = time.perf_counter()
    if enabled:
        stream.write(f"{what} …\n")
        stream.flush()
    yield
    if enabled:
        stream.write(f"{what}: done in {time.perf_counter() - t0:.1f} s\n")
        stream.flush()
