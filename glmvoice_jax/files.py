"""Files in and out: the one JSONL reader and the one atomic writer of the package.

Reading: manifests, StoryCloze items, scoring inputs and tokenize inputs are JSONL files written
by users; a bad line must name the file and line (``path:N``) and what is wrong, never surface as
a ``json`` or ``KeyError`` traceback from deep inside a job (:func:`objects`).

Writing: every job that must survive a kill writes a file under a temporary name and renames it
when complete (:func:`atomic`, :func:`write_text`, :func:`write_json`, :func:`write_jsonl`), so a
rerun finds either the whole file or none — never a half-written one that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

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


@contextlib.contextmanager
def atomic(path: str, suffix: str = TMP_SUFFIX) -> Iterator[str]:
    """Yields a temporary path next to ``path``; renames it to ``path`` when the block succeeds.

    For writers that take a path (soundfile, matplotlib, ArrayRecord). Creates the parent folder.
    ``suffix`` keeps the extension a writer infers the format from (e.g. ``".tmp.png"``).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = path + suffix
    yield tmp
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, value: Any, *, indent: int = 1, **kwargs: Any) -> None:
    """Writes ``value`` as JSON (plus a newline) to ``path`` atomically; kwargs go to json.dump."""
    write_text(path, json.dumps(value, indent=indent, **kwargs) + "\n")


def write_jsonl(path: str, rows: Iterable[Any], **kwargs: Any) -> None:
    """Writes one JSON object per line to ``path`` atomically; kwargs go to json.dumps."""
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, **kwargs) + "\n")
