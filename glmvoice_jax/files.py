"""Files in and out: the one JSONL reader and the one atomic writer of the package.

Reading: manifests, StoryCloze items, scoring inputs and tokenize inputs are JSONL files written
by users; a bad line must name the file and line (``path:N``) and what is wrong, never surface as
a ``json`` or ``KeyError`` traceback from deep inside a job (:func:`objects`).

Writing: every job that must survive a kill writes under a temporary name and renames when
complete, so a rerun finds either the whole result or none, never a half-written one that looks
finished. Files: :func:`atomic` (for writers that take a path: soundfile, numpy, matplotlib,
ArrayRecord), :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`write_jsonl`;
these take a local path or an etils.epath URI (gs://...). Directories (a converted checkpoint):
:func:`atomic_dir`, local paths only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

from etils import epath

TMP_SUFFIX = ".tmp"


def objects(path: str) -> Iterator[tuple[int, str, dict]]:
    """Yields (N, ``"path:N"``, object) for each non-blank line N (1-based) of ``path``.

    Raises:
      ValueError: ``path:N: not valid JSON (...)`` or ``path:N: expected a JSON object, got T``.
    """
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield n, where, obj


def read_jsonl(path: str) -> list[dict]:
    """Every object of a JSONL file, in order (the errors of :func:`objects`)."""
    return [obj for _, _, obj in objects(path)]


@contextlib.contextmanager
def atomic(path: str | os.PathLike, suffix: str = TMP_SUFFIX) -> Iterator[str]:
    """Yields a temporary path next to ``path``; renames it to ``path`` when the block succeeds.

    When the block raises, the temporary file is removed and ``path`` is left as it was. Creates
    the parent folder. ``suffix`` keeps the extension a writer infers the format from (e.g.
    ``".tmp.png"``). A writer that takes a path (soundfile, matplotlib) needs a local ``path``.
    """
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + suffix)
    try:
        yield os.fspath(tmp)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    tmp.replace(target)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic(path) as tmp:
        epath.Path(tmp).write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, *, indent: int = 1, **kwargs: Any) -> None:
    """Writes ``value`` as JSON (plus a newline) to ``path`` atomically; kwargs go to json.dump."""
    write_text(path, json.dumps(value, indent=indent, **kwargs) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any], **kwargs: Any) -> None:
    """Writes one JSON object per line to ``path`` atomically; kwargs go to json.dumps."""
    with atomic(path) as tmp, epath.Path(tmp).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, **kwargs) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, what: str = "writing") -> Iterator[str]:
    """Yields a new hidden directory next to ``path``; renames it to ``path`` on success.

    The directory is ``.<name>.<what>-<pid>`` beside ``path``, so an interrupted job leaves
    nothing at ``path`` that looks complete; when the block raises it is deleted. ``path`` must
    not exist (the rename would fail). Local paths only.
    """
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{what}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
