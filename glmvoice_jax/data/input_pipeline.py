"""Grain input pipeline: ArrayRecord shards of ``records.Example`` -> packed per-token batches.

Why it is built this way:

* Random access per source (``ShardedRecordSource``) rather than Grain's stock ArrayRecord source,
  so a bad record is reported with its source, shard file and record index, and readers are
  opened lazily with a bounded number of open files (sources with thousands of shards work).
* ``MapDataset`` up to and including the mixture and the per-process slice: everything before
  decoding is index arithmetic, so the iterator state is a few integers (JSON) and each process
  reads only its own records.
* Mixture weights act on documents, not tokens (jax_stack_notes.md §7.2); calibrate them against
  measured token shares (glm4voice.md §12 #17).
* Documents longer than ``seq_len`` are split into ``seq_len`` chunks, never truncated, then packed
  first-fit with segment ids and restarting positions (glm4voice.md §12 #15).
* Out-of-range token ids raise: an embedding lookup would silently gather garbage
  (house_style.md §8).

Pipeline, in order: per-source shuffle + repeat -> weighted mix -> decode + validate = the global
document stream D (a function of sources and seed) -> for each global batch row r, the row stream
D[r::B] -> chunk -> FirstFit pack -> one row per batch; a process stacks the rows it owns. Global
batch row r is always the next packed row of row stream r, so every global batch is a function of
(sources, seed, seq_len, global batch B, packing_bins) alone, whatever the process count, and the
iterator state (one position per row) can be resumed by any number of processes
(``read_row_states``; docs/elastic_resume.md). Optional mp_prefetch workers each pack whole rows.

Batch layout (each [batch_size, seq_len] int32): ``tokens``; ``segment_ids`` (1.. per packed
document, 0 = padding); ``positions`` (restart at 0 per document); ``loss_mask`` (the records'
loss_mask, 0 on padding). The first token of each segment has no in-segment context; the loss
code, not this pipeline, must skip targets whose segment id differs from the previous token's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
import re
import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np
from absl import logging
from array_record.python import array_record_module
from etils import epath

from glmvoice_jax.data import records

# Open readers kept per source; with more shards, readers are reopened on demand (each reopen reads
# the shard's footer and index). Bounded so many sources x thousands of shards stay under the
# file-descriptor limit and the readers' index memory stays small.
_MAX_OPEN_READERS = 128
_COUNT_THREADS = 16
# FirstFit bins per row stream: a packed group of this many rows is emitted at a time.
DEFAULT_PACKING_BINS = 16
# Marks the row-stream positions inside a saved iterator state (read_row_states finds them).
ROW_STATE_KEY = "glmvoice_row_streams"


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One corpus of the mixture.

    Attributes:
      name: corpus name, used in error messages and for its shuffle seed.
      paths: glob patterns / files of its ArrayRecord shards.
      weight: relative sampling weight (per document); 0 disables the source.
    """

    name: str
    paths: tuple[str, ...]
    weight: float


class RawRecord(NamedTuple):
    """Undecoded record plus where it came from (for error messages)."""

    data: bytes
    source: str
    path: str
    index: int


class ShardedRecordSource:
    """Random access over the records of all shards of one source (Grain data source protocol).

    Record counts are read once at construction (the shard footers only); readers are opened on
    first use and at most ``_MAX_OPEN_READERS`` stay open. Pickles without its readers, for Grain
    worker processes.
    """

    def __init__(self, name: str, paths: Sequence[str]):
        self.name = name
        self.paths = tuple(paths)
        workers = max(1, min(_COUNT_THREADS, len(self.paths)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            counts = list(pool.map(self._count, self.paths))
        self._ends = np.cumsum(counts, dtype=np.int64)
        self._init_cache()

    def _init_cache(self):
        self._lock = threading.Lock()
        self._readers: collections.OrderedDict[int, Any] = collections.OrderedDict()

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"], state["_readers"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    def _open(self, path: str):
        if not (epath.Path(path).is_file() if _is_url(path) else os.path.isfile(path)):
            raise ValueError(
                f"source {self.name!r}: shard {path} does not exist (or is not a file)"
            )
        reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
        if not reader.ok():
            # The reader reports a missing footer or a truncated file only through ok().
            raise ValueError(
                f"source {self.name!r}: shard {path} is not a readable ArrayRecord file "
                "(corrupt, truncated or still being written); rewrite it or remove it from "
                "the source's paths"
            )
        return reader

    def _count(self, path: str) -> int:
        reader = self._open(path)
        n = reader.num_records()
        reader.close()
        return n

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _reader(self, shard: int):
        with self._lock:
            reader = self._readers.get(shard)
            if reader is not None:
                self._readers.move_to_end(shard)
                return reader
        reader = self._open(self.paths[shard])
        with self._lock:
            self._readers[shard] = reader
            if len(self._readers) > _MAX_OPEN_READERS:
                # Not closed explicitly: another thread may still read from it; it closes when
                # the last reference goes away.
                self._readers.popitem(last=False)
        return reader

    def __getitem__(self, index: int) -> RawRecord:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"source {self.name!r}: record {index} not in [0, {len(self)})")
        shard = int(np.searchsorted(self._ends, index, side="right"))
        local = index - (int(self._ends[shard - 1]) if shard else 0)
        path = self.paths[shard]
        try:
            data = self._reader(shard).read([local])[0]
        except RuntimeError as e:
            raise ValueError(
                f"source {self.name!r}: cannot read record {local} of shard {path}: {e}; the "
                "shard is corrupt, rewrite it or remove it from the source's paths"
            ) from None
        return RawRecord(data, self.name, path, local)


class _DecodeAndCheck(grain.transforms.Map):
    """RawRecord -> {"tokens", "loss_mask"} int32, with every token id range-checked."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def map(self, raw: RawRecord) -> dict[str, np.ndarray]:
        where = f"source {raw.source!r} shard {raw.path} record {raw.index}"
        ex = records.decode(raw.data, where=where)
        tokens = ex.tokens
        bad = (tokens < 0) | (tokens >= self.vocab_size)
        if bad.any():
            pos = int(np.argmax(bad))
            raise ValueError(
                f"{where}: token id {int(tokens[pos])} at position {pos} is outside the "
                f"vocabulary [0, {self.vocab_size}); the data was tokenized for another token "
                "layout: re-tokenize it, or set the model's vocab_size to the layout's"
            )
        return {"tokens": tokens, "loss_mask": ex.loss_mask.astype(np.int32)}


class _Chunk(grain.experimental.FlatMapTransform):
    """Splits a document into seq_len pieces (the last one shorter) so nothing is truncated."""

    max_fan_out = 2**31 - 1  # only the MapDataset flat map uses it; we flat-map an IterDataset

    def __init__(self, seq_len: int):
        self.seq_len = seq_len

    def flat_map(self, element: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        n = len(element["tokens"])
        if n <= self.seq_len:
            return [element]
        return [
            {k: v[start : start + self.seq_len] for k, v in element.items()}
            for start in range(0, n, self.seq_len)
        ]


def _rename_packed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "tokens": batch["tokens"],
        "segment_ids": batch["tokens_segment_ids"],
        "positions": batch["tokens_positions"],
        "loss_mask": batch["loss_mask"],
    }


def _is_url(path: str) -> bool:
    return "://" in path


def _split_glob(pattern: str) -> tuple[str, str]:
    """'gs://b/x/*/y-*.ar' -> ('gs://b/x', '*/y-*.ar'): the fixed root and the glob below it."""
    scheme, rest = pattern.split("://", 1)
    parts = rest.split("/")
    k = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    return f"{scheme}://" + "/".join(parts[:k]), "/".join(parts[k:])


def list_shards(patterns: str | Sequence[str]) -> list[str]:
    """``records.list_shards`` for local globs; bucket globs (gs://...) go through etils.epath.

    Every pattern must match at least one finished shard (not ``*.incomplete``); sorted result.
    ArrayRecordReader reads gs:// paths itself.
    """
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    patterns = [os.fspath(p) for p in patterns]
    local = [p for p in patterns if not _is_url(p)]
    files = set(records.list_shards(local)) if local else set()
    for pattern in (p for p in patterns if _is_url(p)):
        root, rel = _split_glob(pattern)
        root_path = epath.Path(root)
        found = root_path.glob(rel) if rel else [root_path] if root_path.is_file() else []
        matched = [str(f) for f in found if not str(f).endswith(records.TMP_SUFFIX)]
        if not matched:
            raise ValueError(
                f"shard pattern {pattern!r} matches no file; check the bucket path (and that the "
                f"job that writes it has finished: unfinished shards end in {records.TMP_SUFFIX!r})"
            )
        files.update(matched)
    return sorted(files)


def _source_seed(seed: int, name: str) -> int:
    # Keyed by name, so adding or reordering sources keeps every other source's order.
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def _check_sources(sources: Sequence[SourceSpec]) -> list[SourceSpec]:
    """Validates the mixture; returns the sources with positive weight."""
    if not sources:
        raise ValueError("no data sources given; configure at least one source with a weight > 0")
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"data source names must be unique; repeated: {dupes}")
    for s in sources:
        if not math.isfinite(s.weight) or s.weight < 0:
            raise ValueError(
                f"source {s.name!r} has weight {s.weight}; weights must be finite and >= 0 "
                "(0 disables a source)"
            )
        if isinstance(s.paths, str) or not s.paths:
            raise ValueError(
                f"source {s.name!r}: paths must be a non-empty tuple of glob patterns, got "
                f"{s.paths!r}"
            )
    active = [s for s in sources if s.weight > 0]
    if not active:
        raise ValueError(
            f"the weights of the data sources sum to 0 ({ {s.name: s.weight for s in sources} }); "
            "give at least one source a positive weight"
        )
    for s in sources:
        if s.weight == 0:
            logging.info("data source %r has weight 0 and is skipped", s.name)
    return active


def _documents(
    sources: Sequence[SourceSpec],
    *,
    vocab_size: int,
    seed: int,
    shard_group: tuple[int, int] | None = None,
) -> grain.MapDataset:
    """The global, infinite, mixed stream of decoded documents: a function of (sources, seed).

    With ``shard_group`` = (g, G) it is the stream over shard group g's files instead.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    docs = mixed_records(sources, seed=seed, shard_group=shard_group)
    return docs.map(_DecodeAndCheck(vocab_size))


def group_shards(name: str, paths: Sequence[str], group: tuple[int, int]) -> list[str]:
    """Shards ``g, g + G, ...`` of a source's sorted list: the files of shard group g of G.

    Raises:
      ValueError: when the source has fewer shards than groups (a group would read nothing).
    """
    g, count = group
    if not 0 <= g < count:
        raise ValueError(f"shard group {g} must lie in [0, {count})")
    if len(paths) < count:
        raise ValueError(
            f"source {name!r} has {len(paths)} shard(s) for input.shard_groups={count}; every "
            "group needs at least one shard of every source: write more shards, or lower "
            "input.shard_groups"
        )
    return list(paths[g::count])


def mixed_records(
    sources: Sequence[SourceSpec], *, seed: int, shard_group: tuple[int, int] | None = None
) -> grain.MapDataset:
    """The global mixed stream of undecoded ``RawRecord``s (which source each one came from).

    ``_documents`` decodes exactly this stream; glmvoice-data-stats reads it to measure shares.
    ``shard_group`` = (g, G): only group g's shards (``group_shards``) of every source.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    parts, weights = [], []
    for spec in _check_sources(sources):
        try:
            paths = list_shards(spec.paths)
        except ValueError as e:
            raise ValueError(f"source {spec.name!r}: {e}") from None
        if shard_group is not None:
            paths = group_shards(spec.name, paths, shard_group)
        source = ShardedRecordSource(spec.name, paths)
        if len(source) == 0:
            raise ValueError(
                f"source {spec.name!r} has no records in its {len(paths)} shard(s) "
                f"(first: {paths[0]}); write data there, or set its weight to 0"
            )
        logging.info(
            "data source %r: %d records in %d shards, weight %g",
            spec.name,
            len(source),
            len(paths),
            spec.weight,
        )
        ds = grain.MapDataset.source(source).shuffle(seed=_source_seed(seed, spec.name)).repeat()
        parts.append(ds)
        weights.append(spec.weight)
    return grain.MapDataset.mix(parts, weights=weights) if len(parts) > 1 else parts[0]


def record_dataset(
    sources: Sequence[SourceSpec],
    *,
    vocab_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Every ``process_count``-th document of the global stream, starting at ``process_index``.

    Element ``i`` of slice ``p`` is element ``i * process_count + p`` of the global stream, so the
    slices are disjoint and together cover the stream. The row streams of ``make_row_iterator``
    are such slices, one per global batch row.

    Args:
      sources: the mixture; see ``make_iterator``.
      vocab_size: token ids must lie in [0, vocab_size).
      seed: shuffle seed.
      process_index: the slice, in [0, process_count).
      process_count: number of slices.

    Returns:
      A MapDataset of {"tokens": int32 [L], "loss_mask": int32 [L]}.

    Raises:
      ValueError: see ``make_iterator``.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index ({process_index}) must lie in [0, process_count={process_count})"
        )
    docs = _documents(sources, vocab_size=vocab_size, seed=seed)
    return docs[process_index::process_count]


def make_iterator(
    sources: Sequence[SourceSpec],
    *,
    seq_len: int,
    batch_size: int,
    vocab_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch_buffer_size: int = 16,
    packing_bins: int = DEFAULT_PACKING_BINS,
) -> grain.DatasetIterator:
    """The packed batches of one process that owns a contiguous block of the global batch.

    Process ``p`` gets global rows ``[p * batch_size, (p + 1) * batch_size)`` of a global batch of
    ``batch_size * process_count`` rows; see ``make_row_iterator`` for everything else.

    Args:
      sources: the mixture. Sources with weight 0 are skipped without touching their files.
      seq_len: tokens per row; longer documents are split into seq_len chunks.
      batch_size: rows per batch of this process (global batch / process_count).
      vocab_size: token ids must lie in [0, vocab_size).
      seed: seed of the shuffles and of the packing-bin order; same seed, same batches.
      process_index: this process, in [0, process_count).
      process_count: number of data-loading processes.
      num_workers: Grain worker processes (mp_prefetch); must divide batch_size.
      prefetch_buffer_size: documents read ahead per row stream (0 = read on demand).
      packing_bins: FirstFit bins per row stream.

    Returns:
      See ``make_row_iterator``.

    Raises:
      ValueError: see ``make_row_iterator``.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index ({process_index}) must lie in [0, process_count={process_count})"
        )
    start = process_index * batch_size
    return make_row_iterator(
        sources,
        rows=range(start, start + batch_size),
        global_batch_size=batch_size * process_count,
        seq_len=seq_len,
        vocab_size=vocab_size,
        seed=seed,
        num_workers=num_workers,
        prefetch_buffer_size=prefetch_buffer_size,
        packing_bins=packing_bins,
    )


def make_row_iterator(
    sources: Sequence[SourceSpec],
    *,
    rows: Sequence[int],
    global_batch_size: int,
    seq_len: int,
    vocab_size: int,
    seed: int,
    num_workers: int = 0,
    prefetch_buffer_size: int = 16,
    packing_bins: int = DEFAULT_PACKING_BINS,
    start_state: Mapping[str, Any] | None = None,
    shard_groups: int = 0,
) -> grain.DatasetIterator:
    """The checkpointable, infinite iterator of the given rows of every global batch.

    Global batch row ``r`` is always the next packed row of row stream ``r``, which packs
    documents ``r, r + B, r + 2B, ...`` (B = global_batch_size) of the seeded global document
    stream. So a global batch is a function of (sources, seed, seq_len, global_batch_size,
    packing_bins) only: the same whatever the process count, device count, mesh or worker count,
    and whichever process produces which row (docs/elastic_resume.md).

    Args:
      sources: the mixture. Sources with weight 0 are skipped without touching their files.
      rows: the global row indices this process produces, each in [0, global_batch_size); the
        batches hold them in the sorted order.
      global_batch_size: rows of the global batch (B).
      seq_len: tokens per row; longer documents are split into seq_len chunks.
      vocab_size: token ids must lie in [0, vocab_size).
      seed: seed of the shuffles and of the packing-bin order; same seed, same batches.
      num_workers: Grain worker processes (mp_prefetch); each worker packs every
        ``num_workers``-th of the rows, so it must divide len(rows). 0 = threads of this process.
        The batches do not depend on it.
      prefetch_buffer_size: documents read ahead per row stream, by one thread per row stream
        (0 = read on demand).
      packing_bins: FirstFit bins per row stream; more bins pack tighter.
      start_state: where to resume, from ``read_row_states`` (a checkpoint written by any
        number of processes); must cover ``rows``. None = from the start.
      shard_groups: G > 1 splits the global batch into G contiguous blocks of B / G rows and
        every source's shards into G groups (``group_shards``); block g reads only group g's
        files, row r = g * B / G + k packing documents k, k + B / G, ... of group g's stream.
        Still a function of (sources, seed, seq_len, B, G, packing_bins), whatever the process
        count; a process whose rows fall in one block (P divides G) opens only that group's
        shards (docs/elastic_resume.md). 0 or 1 = one stream over all shards.

    Returns:
      A grain.DatasetIterator of dicts with int32 [len(rows), seq_len] arrays ``tokens``,
      ``segment_ids``, ``positions`` and ``loss_mask`` (see the module docstring). Its
      ``get_state()`` is JSON; ``read_row_states`` merges the states of all processes.

    Raises:
      ValueError: at construction, for an invalid argument, a start_state of another
        batch/length/packing or missing rows, a source whose paths match nothing, a missing or
        unreadable shard, a source without records, or weights that are negative or sum to 0;
        while iterating, for a corrupt record or a token id outside [0, vocab_size), naming the
        source, the shard file and the record index.
    """
    rows = sorted(int(r) for r in rows)
    for name, value in (
        ("seq_len", seq_len),
        ("global_batch_size", global_batch_size),
        ("packing_bins", packing_bins),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if not rows or len(set(rows)) != len(rows) or not 0 <= rows[0] <= rows[-1] < global_batch_size:
        raise ValueError(
            f"rows must be distinct indices in [0, global_batch_size={global_batch_size}); got "
            f"{len(rows)} rows from {rows[:1]} to {rows[-1:]}"
        )
    if num_workers < 0 or prefetch_buffer_size < 0:
        raise ValueError(
            f"num_workers ({num_workers}) and prefetch_buffer_size ({prefetch_buffer_size}) "
            "must be >= 0"
        )
    if num_workers > 1 and len(rows) % num_workers:
        raise ValueError(
            f"num_workers ({num_workers}) must divide the {len(rows)} rows of this process (each "
            "worker packs every num_workers-th row); use a divisor of it, or 0"
        )
    layout = {
        "global_batch_size": global_batch_size,
        "seq_len": seq_len,
        "packing_bins": packing_bins,
    }
    groups = max(1, shard_groups)
    if global_batch_size % groups:
        raise ValueError(
            f"input.shard_groups ({shard_groups}) must divide the global batch size "
            f"({global_batch_size}): each group feeds a contiguous block of rows"
        )
    if groups > 1:
        layout["shard_groups"] = groups
    starts = _check_start_state(start_state, layout, rows)

    block = global_batch_size // groups  # rows per group; the stride of its row streams
    group_docs: dict[int, grain.MapDataset] = {}
    for g in sorted({r // block for r in rows}):
        group = (g, groups) if groups > 1 else None
        group_docs[g] = _documents(sources, vocab_size=vocab_size, seed=seed, shard_group=group)
    read = grain.ReadOptions(
        num_threads=min(prefetch_buffer_size, 1), prefetch_buffer_size=prefetch_buffer_size
    )

    def row_stream(r: int) -> grain.IterDataset:
        ds = group_docs[r // block][r % block :: block].to_iter_dataset(read)
        ds = grain.experimental.FlatMapIterDataset(ds, _Chunk(seq_len))
        return grain.experimental.FirstFitPackIterDataset(
            ds,
            length_struct={"tokens": seq_len, "loss_mask": seq_len},
            num_packing_bins=packing_bins,
            seed=seed,
            meta_features=("loss_mask",),  # packed and zero-padded, without its own segment ids
        )

    ds = _RowStreams({r: row_stream(r) for r in rows}, layout, starts)
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        if num_workers > 1:
            # Worker w packs rows w, w + W, ...; mp_prefetch yields one part per worker in turn.
            ds = ds.batch(num_workers).map(_interleave_worker_rows)
    return iter(ds)


def _interleave_worker_rows(parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # (W, R / W, T): part w holds local rows w, w + W, ...  ->  (R, T) in local row order.
    return {
        k: np.ascontiguousarray(v.swapaxes(0, 1)).reshape(-1, v.shape[-1]) for k, v in parts.items()
    }


def _check_start_state(
    state: Mapping[str, Any] | None, layout: Mapping[str, int], rows: Sequence[int]
) -> dict[int, Any]:
    if state is None:
        return {}
    for key, want in layout.items():
        if state.get(key) != want:
            raise ValueError(
                f"the data state was saved with {key}={state.get(key)} but this run has {key}="
                f"{want}; row streams pack documents by {', '.join(layout)}, so resume with the "
                "saved values (or start the data order afresh from a new workdir)"
            )
    saved_groups, groups = state.get("shard_groups", 1), layout.get("shard_groups", 1)
    if saved_groups != groups:
        raise ValueError(
            f"the data state was saved with shard_groups={saved_groups} but this run has "
            f"shard_groups={groups}; resume with the saved value (or start the data order afresh)"
        )
    saved = {int(r): s for r, s in state["rows"].items()}
    missing = [r for r in rows if r not in saved]
    if missing:
        raise ValueError(
            f"the data state has no position for rows {missing[:8]} (of {len(missing)} missing); "
            "it must come from read_row_states over all process files of one checkpoint"
        )
    return {r: saved[r] for r in rows}


class _RowStreams(grain.IterDataset):
    """One packed row from each of several row streams, stacked into a batch.

    Slicing (what ``mp_prefetch`` does per worker) keeps every k-th *row stream*, so a worker
    packs whole rows and the batches do not depend on the worker count.
    """

    def __init__(
        self,
        streams: Mapping[int, grain.IterDataset],
        layout: Mapping[str, int],
        starts: Mapping[int, Any],
    ):
        self._rows = sorted(streams)
        super().__init__([streams[r] for r in self._rows])
        self._layout = dict(layout)
        self._starts = dict(starts)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        del sequential_slice  # rows are sliced, never records
        self._rows = self._rows[sl]
        self._parents = tuple(self._parents[sl])

    def __iter__(self) -> grain.DatasetIterator:
        return _RowStreamsIterator(self._rows, self._parents, self._layout, self._starts)

    def __str__(self) -> str:
        return f"RowStreams({len(self._rows)} rows of {self._layout})"


class _RowStreamsIterator(grain.DatasetIterator):
    def __init__(self, rows, parents, layout, starts):
        super().__init__([p.__iter__() for p in parents])
        self._rows = list(rows)
        self._layout = layout
        for r, it in zip(self._rows, self._parents, strict=True):
            if r in starts:
                it.set_state(starts[r])

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._parents]
        return _rename_packed({k: np.stack([p[k] for p in parts]) for k in parts[0]})

    def get_state(self) -> dict[str, Any]:
        rows = {str(r): it.get_state() for r, it in zip(self._rows, self._parents, strict=True)}
        return {ROW_STATE_KEY: dict(self._layout, rows=rows)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        starts = _check_start_state(state[ROW_STATE_KEY], self._layout, self._rows)
        for r, it in zip(self._rows, self._parents, strict=True):
            it.set_state(starts[r])


def _find_row_states(state: Any) -> list[dict]:
    """The row-stream states inside a saved iterator state (nested in mp_prefetch's state)."""
    if isinstance(state, Mapping):
        if ROW_STATE_KEY in state:
            return [state[ROW_STATE_KEY]]
        return [s for v in state.values() for s in _find_row_states(v)]
    if isinstance(state, list | tuple):
        return [s for v in state for s in _find_row_states(v)]
    return []


def read_row_states(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Merges the data states that all processes saved into one checkpoint's ``data`` item.

    Grain's checkpoint handler writes one ``process_<i>-of-<n>.json`` per process, each holding
    the positions of that process' row streams. Merged, they give the position of every row of
    the global batch, which any number of processes can resume from (``start_state`` of
    ``make_row_iterator``).

    Args:
      data_dir: a checkpoint step's data item directory, e.g. ``WORKDIR/checkpoints/400/data``
        (any path epath understands, gs:// included).

    Returns:
      {"global_batch_size", "seq_len", "packing_bins", "rows": {row: state}} covering every row.

    Raises:
      FileNotFoundError: no process files, or one of the n files is missing.
      ValueError: files of different process counts or layouts, or rows not covered.
    """
    root = epath.Path(data_dir)
    files = sorted(root.glob("process_*-of-*.json")) if root.exists() else []
    if not files:
        raise FileNotFoundError(
            f"no Grain data state (process_<i>-of-<n>.json) under {data_dir}; the checkpoint "
            "was written without a data iterator"
        )
    parsed = {}
    for f in files:
        m = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", f.name)
        if m:
            parsed[f] = (int(m.group(1)), int(m.group(2)))
    counts = {n for _, n in parsed.values()}
    if len(counts) != 1:
        raise ValueError(f"{data_dir} mixes data states of process counts {sorted(counts)}")
    (count,) = counts
    have = {i for i, _ in parsed.values()}
    if have != set(range(count)):
        raise FileNotFoundError(
            f"{data_dir} holds data states of processes {sorted(have)} but was written by "
            f"{count}; missing {sorted(set(range(count)) - have)} (incomplete copy?)"
        )
    layout, merged = None, {}
    for f in parsed:
        found = _find_row_states(json.loads(f.read_text()))
        if not found:
            raise ValueError(
                f"{f} holds no row-stream state; it was written by an older input pipeline, "
                "whose data order depended on the process count and cannot be resumed elastically"
            )
        for part in found:
            this = {k: part[k] for k in ("global_batch_size", "seq_len", "packing_bins")}
            if "shard_groups" in part:
                this["shard_groups"] = part["shard_groups"]
            if layout is not None and this != layout:
                raise ValueError(f"{f}: data layout {this} differs from {layout}")
            layout = this
            merged.update({int(r): s for r, s in part["rows"].items()})
    missing = sorted(set(range(layout["global_batch_size"])) - set(merged))
    if missing:
        raise ValueError(
            f"{data_dir}: the process files cover {len(merged)} of "
            f"{layout['global_batch_size']} rows; missing {missing[:8]}"
        )
    return dict(layout, rows=merged)


def sources_from_config(cfg_sources: Mapping[str, Mapping], workdir: str) -> list[SourceSpec]:
    """Builds SourceSpecs from a config mapping ``name -> {"paths": ..., "weight": ...}``.

    Args:
      cfg_sources: per source, "paths" (a glob string or a list of them) and "weight" (float).
        "{workdir}" inside a path is replaced by ``workdir``.
      workdir: the run's work directory.

    Returns:
      The specs, in the mapping's order.

    Raises:
      ValueError: a missing or unknown key, or paths of the wrong type.
    """
    specs = []
    for name, entry in cfg_sources.items():
        entry = dict(entry.items())
        unknown = sorted(set(entry) - {"paths", "weight"})
        missing = sorted({"paths", "weight"} - set(entry))
        if unknown or missing:
            raise ValueError(
                f"data source {name!r}: each source needs exactly the keys 'paths' and "
                f"'weight'; missing {missing}, unknown {unknown}"
            )
        paths = entry["paths"]
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, Sequence) or not all(isinstance(p, str) for p in paths):
            raise ValueError(
                f"data source {name!r}: 'paths' must be a string or a list of strings, got "
                f"{paths!r}"
            )
        specs.append(
            SourceSpec(
                name=str(name),
                paths=tuple(p.replace("{workdir}", workdir) for p in paths),
                weight=float(entry["weight"]),
            )
        )
    return specs
