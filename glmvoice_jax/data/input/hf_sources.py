"""Hugging Face dataset files as mixture sources: parquet / arrow rows, tokenized on read.

Why: the corpora a pre-training user has at hand (FineWeb-style text, the parquet exports of the
Hub) come as parquet or arrow files. Converting them to ArrayRecord first (``text_records``) is
the path for the 1T-token run, but a source that reads them directly lets a user train on a
downloaded dataset at once, with the same guarantees as ArrayRecord shards:

* ``TableTextSource`` is random access (Grain's data source protocol) over the rows of the sorted
  files: row ``i`` of the source is a fixed document, so the per-source shuffle, the mixture, the
  row streams and the elastic resume of ``resume.py`` hold unchanged (batches are a function of
  sources, seed and layout; the saved state is one index per row stream; the shard-set check
  sees a file added, removed or resized).
* Rows come out as ``RawRecord``s holding the ``text`` record that ``prompts.text`` builds and
  ``text_records`` would have written, so decoding, the vocabulary check, the target check and
  the statistics job read them as they read ArrayRecord shards.
* A null, empty or whitespace-only text becomes the framing tokens alone with no target
  (loss_mask 0): a row cannot be dropped from an indexed source without shifting every later
  index, and a zero-target document costs a few packing slots, never a wrong gradient. The first
  such row per source is logged with its file and row.

Formats (``format`` of a config source): ``parquet`` (what the Hub stores, e.g.
``data/CC-MAIN-*/000_00000.parquet`` of FineWeb) and ``arrow`` (what ``datasets`` writes with
``save_to_disk`` and keeps in its cache: Arrow IPC stream files, or IPC files). Arrow files are
memory-mapped, so a row is a slice (O(1)) and up to ``_CACHED_ARROW_FILES`` stay mapped; a
parquet row (or a bucket arrow file, read whole) costs the decode of its row group, and the
latest ``_CACHE_BYTES`` of decoded groups are kept per source. A parquet source larger than that
is slow under the shuffled order (a decode per document): use arrow files, or the offline
``text_records`` job, for large corpora (docs/corpora_at_scale.md has the measurements).

``ParquetStream`` is the streaming form (``datasets``' ``streaming=True``): rows in file order,
read sequentially from any fsspec URL (hf://, gs://, memory://); its state is the count of rows
consumed, so it resumes exactly, but its order is the files' order, not the seeded global order,
and it does not enter the mixture (which needs random access); see the guide.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fsspec
import grain
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
from absl import logging
from etils import epath

from glmvoice_jax.data import prompts, records, text_tokenizer
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.data.input.sources import RawRecord, SourceSpec

FORMATS = ("parquet", "arrow")
# Config keys a table source accepts besides paths / weight / format, with their defaults
# (None = required).
OPTIONS = {"tokenizer": None, "layout": None, "column": "text"}
# Decoded parquet row groups (one column each) kept per source, up to this many bytes: a shuffled
# read of a source whose groups all fit is as fast as arrow (docs/corpora_at_scale.md).
_CACHE_BYTES = 512 << 20
# Arrow tables kept per source: memory-mapped, so they hold address space, not memory.
_CACHED_ARROW_FILES = 128
_FOOTER_THREADS = 16


def check_options(name: str, fmt: str, options: Mapping[str, Any]) -> dict[str, str]:
    """The options of a table source with defaults filled in.

    Raises:
      ValueError: an unknown format, an unknown or missing option, naming the source.
    """
    if fmt not in FORMATS:
        raise ValueError(
            f"data source {name!r}: format {fmt!r} is not one of array_record, {', '.join(FORMATS)}"
        )
    unknown = sorted(set(options) - set(OPTIONS))
    out = {k: options.get(k, default) for k, default in OPTIONS.items()}
    missing = sorted(k for k, v in out.items() if v is None)
    if unknown or missing:
        raise ValueError(
            f"data source {name!r} (format {fmt}): unknown keys {unknown}, missing {missing}; a "
            "table source takes 'tokenizer' ('bytes' or a tokenizer model file), 'layout' (the "
            "run's tokens.layout) and optionally 'column' (default 'text')"
        )
    return {k: str(v) for k, v in out.items()}


def load_text_tokenizer(spec: str, layout: token_layout_lib.TokenLayout):
    """``encode(text) -> ids`` without the [gMASK]<sop> prefix, for ``spec`` in this layout.

    "bytes" is the demo layouts' UTF-8 byte vocabulary; a path loads GLM-4's tiktoken file or a
    SentencePiece model (``text_tokenizer``).

    Raises:
      ValueError: a missing file, or a tokenizer whose ids overflow the layout's text range.
    """
    if spec == "bytes":
        size = 256

        def encode(text: str) -> list[int]:
            return list(text.encode("utf-8"))
    else:
        if not os.path.isfile(spec):
            raise ValueError(f"tokenizer {spec!r}: not 'bytes' and not a tokenizer model file")
        if text_tokenizer.detect_kind(spec) == "tiktoken":
            tok = text_tokenizer.TiktokenTokenizer.from_file(spec)
            size = len(tok.ranks)
        else:
            tok = text_tokenizer.SentencePieceTokenizer.from_file(spec)
            size = tok.vocab_size

        def encode(text: str) -> list[int]:
            return tok.encode(text, add_prefix=False)

    if size > layout.text_vocab_size:
        raise ValueError(
            f"tokenizer {spec!r} has {size} text ids but token layout {layout.name!r} holds only "
            f"{layout.text_vocab_size}; use the layout that belongs to the tokenizer"
        )
    return encode


def _open_binary(path: str):
    return epath.Path(path).open("rb") if "://" in path else open(path, "rb")


def read_arrow(path: str) -> pa.Table:
    """An Arrow IPC stream (what ``datasets`` writes) or IPC file, memory-mapped when local."""
    src = pa.memory_map(path) if "://" not in path else pa.BufferReader(_read_all(path))
    try:
        return pa.ipc.open_stream(src).read_all()
    except pa.ArrowInvalid:
        src.seek(0)
        return pa.ipc.open_file(src).read_all()


def _read_all(path: str) -> bytes:
    with _open_binary(path) as f:
        return f.read()


def _check_column(name: str, path: str, schema: pa.Schema, column: str) -> None:
    if column not in schema.names:
        raise ValueError(
            f"source {name!r}: {path} has no column {column!r}; its columns are "
            f"{schema.names}; set the source's 'column'"
        )
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(
            f"source {name!r}: column {column!r} of {path} holds {kind}, not text (string); "
            "point 'column' at the text column"
        )


class TableTextSource:
    """Random access over the text rows of sorted parquet / arrow files (Grain data source).

    Row counts (and parquet row-group sizes) are read from the footers at construction; the
    tokenizer, arrow tables and row groups are loaded on first use. Pickles without them, for
    Grain worker processes.
    """

    def __init__(self, name: str, paths: Sequence[str], fmt: str, options: Mapping[str, str]):
        self.name = name
        self.paths = tuple(paths)
        self.format = fmt
        opts = check_options(name, fmt, options)
        self.column, self._tokenizer_spec = opts["column"], opts["tokenizer"]
        self.layout = token_layout_lib.get(opts["layout"])
        encode = load_text_tokenizer(self._tokenizer_spec, self.layout)  # fails now, not later
        # Footers in parallel: thousands of bucket files at ~50 ms each would take minutes.
        workers = max(1, min(_FOOTER_THREADS, len(self.paths)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            group_rows = list(pool.map(self._group_rows, self.paths))
        self._group_ends = [np.cumsum(g, dtype=np.int64) for g in group_rows]
        self._ends = np.cumsum([int(g[-1]) if len(g) else 0 for g in self._group_ends])
        self._init_cache()
        self._encode = encode

    def _group_rows(self, path: str) -> list[int]:
        """Rows per parquet row group (one entry for an arrow file); checks the column."""
        try:
            if self.format == "parquet":
                with _open_binary(path) as f:
                    meta = pq.ParquetFile(f).metadata
                    schema = meta.schema.to_arrow_schema()
                    rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            else:
                table = read_arrow(path)
                schema, rows = table.schema, [table.num_rows]
        except (OSError, pa.ArrowException) as e:
            raise ValueError(
                f"source {self.name!r}: {path} is not a readable {self.format} file ({e}); "
                "re-download it or remove it from the source's paths"
            ) from None
        _check_column(self.name, path, schema, self.column)
        return rows

    def _init_cache(self):
        self._lock = threading.Lock()
        # (file, row group) -> (text column, bytes it holds in memory)
        self._groups: collections.OrderedDict[tuple[int, int], tuple[pa.ChunkedArray, int]] = (
            collections.OrderedDict()
        )
        self._bytes = 0  # of the cached decoded parquet groups
        self._encode = None
        self._warned = False

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_lock", "_groups", "_bytes", "_encode", "_warned"):
            del state[key]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _column_of(self, shard: int, group: int) -> pa.ChunkedArray:
        key = (shard, group)
        with self._lock:
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key][0]
        path = self.paths[shard]
        if self.format == "parquet":
            with _open_binary(path) as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=[self.column])
        else:
            table = read_arrow(path)
        column = table.column(self.column)  # chunked: no copy of a memory-mapped file
        size = 0 if self.format == "arrow" and "://" not in path else column.nbytes  # mapped: 0
        with self._lock:
            if key not in self._groups:
                self._groups[key] = (column, size)
                self._bytes += size
            while len(self._groups) > 1 and (
                self._bytes > _CACHE_BYTES or len(self._groups) > _CACHED_ARROW_FILES
            ):
                self._bytes -= self._groups.popitem(last=False)[1][1]
        return column

    def text(self, index: int) -> tuple[str | None, str, int]:
        """(text or None, file, row in the file) of row ``index``."""
        shard = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[shard - 1]) if shard else 0)
        ends = self._group_ends[shard]
        group = int(np.searchsorted(ends, local, side="right"))
        in_group = local - (int(ends[group - 1]) if group else 0)
        value = self._column_of(shard, group)[in_group].as_py()
        return value, self.paths[shard], local

    def __getitem__(self, index: int) -> RawRecord:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"source {self.name!r}: row {index} not in [0, {len(self)})")
        text, path, local = self.text(index)
        if self._encode is None:
            self._encode = load_text_tokenizer(self._tokenizer_spec, self.layout)
        lay = self.layout
        if text is None or not text.strip():
            if not self._warned:
                self._warned = True
                logging.warning(
                    "source %r: %s row %d has an empty or null %r; such rows become documents "
                    "without targets (filter the corpus to drop them)",
                    self.name,
                    path,
                    local,
                    self.column,
                )
            tokens = np.asarray([*lay.bos_ids, lay.eos_id], np.int32)
            ex = records.Example(tokens, np.zeros_like(tokens), self.name, "text")
        else:
            ex = prompts.text(self._encode(text), lay, source=self.name)
        return RawRecord(records.encode(ex), self.name, path, local)


def open_source(spec: SourceSpec, paths: Sequence[str]) -> TableTextSource:
    """The random-access source of a config source whose format is parquet or arrow."""
    return TableTextSource(spec.name, paths, spec.format, dict(spec.options))


class ParquetStream(grain.IterDataset):
    """Text rows of parquet files read in order from any fsspec URL, with count-based resume.

    The streaming counterpart of ``TableTextSource`` for files that are not on a local disk or a
    bucket epath reads (``hf://datasets/...`` with huggingface_hub installed, any fsspec
    protocol). Yields {"text", "path", "row"}; the iterator state is {"file", "row"}: files
    done and rows of the current file consumed, so a restored iterator continues with the next
    unread row. The order is the order of ``urls`` (row-group by row-group), not shuffled.
    """

    def __init__(self, urls: Sequence[str], column: str = "text", batch_rows: int = 1024):
        super().__init__()
        if not urls:
            raise ValueError("ParquetStream needs at least one file URL")
        self.urls = tuple(urls)
        self.column = column
        self.batch_rows = batch_rows

    def __iter__(self) -> _ParquetStreamIterator:
        return _ParquetStreamIterator(self)

    def __str__(self) -> str:
        return f"ParquetStream({len(self.urls)} files, column {self.column!r})"


class _ParquetStreamIterator(grain.DatasetIterator):
    def __init__(self, ds: ParquetStream):
        super().__init__()
        self._ds = ds
        self._file, self._row = 0, 0
        self._rows: Iterator[tuple[int, Any]] | None = None

    def _open_rows(self) -> Iterator[tuple[int, Any]]:
        url = self._ds.urls[self._file]
        with fsspec.open(url, "rb") as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            _check_column("stream", url, schema, self._ds.column)
            row, skip = 0, self._row  # rows of this file consumed before a restore
            for batch in pf.iter_batches(self._ds.batch_rows, columns=[self._ds.column]):
                if row + batch.num_rows > skip:
                    yield from batch.column(0).to_pylist()[max(0, skip - row) :]
                row += batch.num_rows

    def __next__(self) -> dict[str, Any]:
        while self._file < len(self._ds.urls):
            if self._rows is None:
                self._rows = self._open_rows()
            value = next(self._rows, StopIteration)
            if value is not StopIteration:
                out = {"text": value, "path": self._ds.urls[self._file], "row": self._row}
                self._row += 1
                return out
            self._file, self._row, self._rows = self._file + 1, 0, None
        raise StopIteration

    def get_state(self) -> dict[str, int]:
        return {"file": self._file, "row": self._row}

    def set_state(self, state: Mapping[str, int]) -> None:
        self._file, self._row, self._rows = int(state["file"]), int(state["row"]), None
