"""JSON-lines input files: one reader, so every malformed line is refused the same way.

Manifests, StoryCloze items, scoring inputs and tokenize inputs are JSONL files written by users;
a bad line must name the file and line (``path:N``) and what is wrong, never surface as a
``json`` or ``KeyError`` traceback from deep inside a job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator


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
