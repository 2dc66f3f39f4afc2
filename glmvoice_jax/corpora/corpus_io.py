"""Indexed readers of the corpus jobs' inputs, and the text tokenizer they use.

Inputs, all read by index ranges so a job shard touches only its own block:

* ``LineCorpus``: lines of ``.jsonl`` / ``.txt`` files (globs), with a sparse offset index (one
  byte offset every ``_INDEX_EVERY`` lines, so memory is O(lines / 1024)).
* ``TfdsCorpus``: a dataset built by ``data_pipelines/build_tfds.py`` (array_record, read with
  ``as_data_source``; no TensorFlow).

``open_corpus(spec)`` picks one: a folder holding ``dataset_info.json`` (a TFDS version folder) or
``DATA_DIR/NAME[/VERSION]`` is TFDS, anything else is a glob of line files. Items come out as
``Item(index, id, fields, error)``: ``fields`` is the parsed dict, or ``error`` is a
(reason, detail) pair for an input that cannot be parsed (undecodable bytes, bad JSON).

Text tokenizers: ``load_tokenizer("bytes")`` is the demo layout's UTF-8 byte vocabulary;
a path loads GLM-4's tiktoken file or a SentencePiece model through
``glmvoice_jax.data.text_tokenizer``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from glmvoice_jax.corpora import hf_corpora
from glmvoice_jax.data import text_tokenizer
from glmvoice_jax.data import token_layout as token_layout_lib

_INDEX_EVERY = 1024
_CHUNK = 1 << 20


class Item(NamedTuple):
    index: int
    id: str
    fields: dict[str, Any] | None
    error: tuple[str, str] | None


def _expand(patterns: str | Sequence[str]) -> list[str]:
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    files: set[str] = set()
    for p in patterns:
        matched = [f for f in glob.glob(os.path.expanduser(p), recursive=True) if os.path.isfile(f)]
        if not matched:
            raise ValueError(f"input pattern {p!r} matches no file")
        files.update(matched)
    return sorted(files)


class LineCorpus:
    """Lines of text / JSONL files as one indexed sequence.

    ``.jsonl`` lines must be JSON objects; ``.txt`` lines become ``{"text": line}`` and blank
    ``.txt`` lines are skipped silently (they separate paragraphs; they are not inputs).
    """

    def __init__(self, patterns: str | Sequence[str]):
        self.files = _expand(patterns)
        self._starts: list[int] = []  # first global line index of each file
        self._offsets: list[list[int]] = []  # byte offset of every _INDEX_EVERY-th line
        total = 0
        for path in self.files:
            offsets, n = self._index(path)
            self._starts.append(total)
            self._offsets.append(offsets)
            total += n
        self._len = total

    @staticmethod
    def _index(path: str) -> tuple[list[int], int]:
        offsets, n, pos, tail = [0], 0, 0, b""
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                start = 0
                while (nl := chunk.find(b"\n", start)) >= 0:
                    n += 1
                    if n % _INDEX_EVERY == 0:
                        offsets.append(pos + nl + 1)
                    start = nl + 1
                tail = chunk[start:]
                pos += len(chunk)
        if tail:
            n += 1  # last line without a newline
        return offsets, n

    def __len__(self) -> int:
        return self._len

    def where(self, index: int) -> str:
        """``path:line`` (1-based) of input item ``index``, for error details."""
        f = int(np.searchsorted(self._starts, index, side="right")) - 1
        return f"{self.files[f]}:{index - self._starts[f] + 1}"

    def _lines(self, r: range) -> Iterator[tuple[int, str, bytes]]:
        index = r.start
        while index < r.stop:
            f = int(np.searchsorted(self._starts, index, side="right")) - 1
            path, local = self.files[f], index - self._starts[f]
            file_end = self._starts[f + 1] if f + 1 < len(self.files) else self._len
            block = local // _INDEX_EVERY
            with open(path, "rb") as fh:
                fh.seek(self._offsets[f][block])
                for _ in range(local - block * _INDEX_EVERY):
                    fh.readline()
                while index < min(r.stop, file_end):
                    yield index, f"{path}:{local + 1}", fh.readline().rstrip(b"\r\n")
                    index, local = index + 1, local + 1

    def iter_range(self, r: range) -> Iterator[Item]:
        for index, where, raw in self._lines(r):
            is_txt = where.rsplit(":", 1)[0].endswith(".txt")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Item(index, where, None, ("undecodable", f"{where}: {e}"))
                continue
            if is_txt:
                if line.strip():
                    yield Item(index, where, {"text": line}, None)
                continue
            if not line.strip():
                yield Item(index, where, None, ("empty_line", where))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield Item(index, where, None, ("bad_json", f"{where}: {e}"))
                continue
            if not isinstance(obj, dict):
                yield Item(index, where, None, ("bad_json", f"{where}: not a JSON object"))
                continue
            yield Item(index, str(obj.get("id", where)), obj, None)


class TfdsCorpus:
    """One split of a TFDS dataset folder, read with ``as_data_source`` (array_record)."""

    def __init__(self, directory: str, split: str = "train"):
        import tensorflow_datasets as tfds  # lazy: seconds to import; only TFDS inputs need it

        self.directory = directory
        builder = tfds.builder_from_directory(directory)
        if split not in builder.info.splits:
            raise ValueError(
                f"TFDS dataset {directory} has no split {split!r}; it has "
                f"{sorted(builder.info.splits)}"
            )
        self.source = builder.as_data_source(split=split)
        self.features = set(builder.info.features.keys())

    def __len__(self) -> int:
        return len(self.source)

    def iter_range(self, r: range) -> Iterator[Item]:
        for index in r:
            ex = self.source[index]
            fields = {}
            for k, v in ex.items():
                if isinstance(v, bytes):
                    try:
                        v = v.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield Item(index, str(index), None, ("undecodable", f"field {k}: {e}"))
                        break
                fields[k] = v
            else:
                yield Item(index, str(fields.get("id", index)), fields, None)


def tfds_version_dir(spec: str) -> str | None:
    """The TFDS version folder of ``spec`` (itself, or the newest version under it), or None."""
    if os.path.isfile(os.path.join(spec, "dataset_info.json")):
        return spec
    if os.path.isdir(spec):
        versions = sorted(
            (
                d
                for d in os.listdir(spec)
                if os.path.isfile(os.path.join(spec, d, "dataset_info.json"))
            ),
            key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()),
        )
        if versions:
            return os.path.join(spec, versions[-1])
    return None


def open_corpus(spec: str, split: str = "train"):
    """A TFDS dataset folder or a comma-separated list of globs of .jsonl / .txt files.

    Globs of .parquet / .arrow files (Hugging Face datasets) are ``hf_corpora.TableCorpus``.
    """
    if hf_corpora.is_table_spec(spec):
        return hf_corpora.TableCorpus(spec)
    version_dir = tfds_version_dir(spec)
    if version_dir is not None:
        return TfdsCorpus(version_dir, split)
    return LineCorpus(spec)


class ByteTokenizer(text_tokenizer.TextTokenizer):
    """UTF-8 bytes as ids 0..255: the text vocabulary of the ``demo`` token layout."""

    kind = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str, *, add_prefix: bool = True) -> list[int]:
        if add_prefix:
            raise ValueError("ByteTokenizer has no prefix tokens; call encode(add_prefix=False)")
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: str) -> dict:
        return {"kind": self.kind}


def load_tokenizer(spec: str, layout: token_layout_lib.TokenLayout) -> text_tokenizer.TextTokenizer:
    """Loads "bytes" or a tokenizer model file (GLM-4 tiktoken format or SentencePiece).

    Raises:
      ValueError: the tokenizer's text ids do not fit the layout's text range.
    """
    if spec == "bytes":
        tok: text_tokenizer.TextTokenizer = ByteTokenizer()
        text_size = 256
    else:
        if not os.path.isfile(spec):
            raise ValueError(f"--tokenizer {spec!r}: not 'bytes' and not a tokenizer model file")
        if text_tokenizer.detect_kind(spec) == "tiktoken":
            tok = text_tokenizer.TiktokenTokenizer.from_file(spec)
            text_size = len(tok.ranks)
        else:
            tok = text_tokenizer.SentencePieceTokenizer.from_file(spec)
            text_size = tok.vocab_size
    if text_size > layout.text_vocab_size:
        raise ValueError(
            f"tokenizer {spec!r} has {text_size} text ids but token layout {layout.name!r} holds "
            f"only {layout.text_vocab_size}; pick the layout that belongs to the tokenizer"
        )
    return tok


def add_process_flags(flags_module) -> None:
    """--process_index / --process_count (default: from JAX) for the absl job mains."""
    flags_module.DEFINE_integer("process_index", None, "This process (default jax.process_index).")
    flags_module.DEFINE_integer("process_count", None, "Processes (default jax.process_count).")
