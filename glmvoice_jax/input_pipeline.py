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

Pipeline, in order: per-source shuffle + repeat -> weighted mix -> ``[process_index::
process_count]`` -> decode + validate -> chunk -> FirstFit pack -> batch -> optional mp_prefetch.

Batch layout (each [batch_size, seq_len] int32): ``tokens``; ``segment_ids`` (1.. per packed
document, 0 = padding); ``positions`` (restart at 0 per document); ``loss_mask`` (the records'
loss_mask, 0 on padding). The first token of each segment has no in-segment context; the loss
code, not this pipeline, must skip targets whose segment id differs from the previous token's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np
from absl import logging
from array_record.python import array_record_module

from glmvoice_jax import records

# Open readers kept per source; with more shards, readers are reopened on demand (each reopen reads
# the shard's footer and index). Bounded so many sources x thousands of shards stay under the
# file-descriptor limit and the readers' index memory stays small.
_MAX_OPEN_READERS = 128
_COUNT_THREADS = 16


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
        if not os.path.isfile(path):
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


def record_dataset(
    sources: Sequence[SourceSpec],
    *,
    vocab_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """The infinite, mixed, per-process stream of decoded documents (before chunking and packing).

    Element ``i`` of process ``p`` is element ``i * process_count + p`` of the global stream, so
    the processes read disjoint records and together read what one process would.

    Args:
      sources: the mixture; see ``make_iterator``.
      vocab_size: token ids must lie in [0, vocab_size).
      seed: shuffle seed.
      process_index: this process, in [0, process_count).
      process_count: number of processes reading the stream.

    Returns:
      A MapDataset of {"tokens": int32 [L], "loss_mask": int32 [L]}.

    Raises:
      ValueError: see ``make_iterator``.
    """
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index ({process_index}) must lie in [0, process_count={process_count})"
        )
    parts, weights = [], []
    for spec in _check_sources(sources):
        try:
            paths = records.list_shards(spec.paths)
        except ValueError as e:
            raise ValueError(f"source {spec.name!r}: {e}") from None
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
    mixed = grain.MapDataset.mix(parts, weights=weights) if len(parts) > 1 else parts[0]
    return mixed[process_index::process_count].map(_DecodeAndCheck(vocab_size))


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
    packing_bins: int | None = None,
) -> grain.DatasetIterator:
    """Builds the checkpointable, infinite iterator of packed training batches for one process.

    Args:
      sources: the mixture. Sources with weight 0 are skipped without touching their files.
      seq_len: tokens per row; longer documents are split into seq_len chunks.
      batch_size: rows per batch of this process (global batch / process_count).
      vocab_size: token ids must lie in [0, vocab_size).
      seed: seed of the shuffles and of the packing-bin order; same seed, same batches.
      process_index: this process, in [0, process_count).
      process_count: number of data-loading processes (jax.process_count()).
      num_workers: Grain worker processes (mp_prefetch); 0 = decode in threads of this process.
        An iterator state saved with N workers must be restored with N workers.
      prefetch_buffer_size: documents read ahead by threads (0 = read on demand).
      packing_bins: FirstFit bins; more bins pack tighter. Default max(batch_size, 16).

    Returns:
      A grain.DatasetIterator of dicts with int32 [batch_size, seq_len] arrays ``tokens``,
      ``segment_ids``, ``positions`` and ``loss_mask`` (see the module docstring). Save and
      restore it with grain.checkpoint.CheckpointSave / CheckpointRestore, or
      get_state() / set_state().

    Raises:
      ValueError: at construction, for an invalid argument, a source whose paths match nothing,
        a missing or unreadable shard, a source without records, or weights that are negative or
        sum to 0; while iterating, for a corrupt record or a token id outside [0, vocab_size),
        naming the source, the shard file and the record index.
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if num_workers < 0 or prefetch_buffer_size < 0:
        raise ValueError(
            f"num_workers ({num_workers}) and prefetch_buffer_size ({prefetch_buffer_size}) "
            "must be >= 0"
        )
    if packing_bins is None:
        packing_bins = max(batch_size, 16)
    if packing_bins <= 0:
        raise ValueError(f"packing_bins must be positive, got {packing_bins}")

    docs = record_dataset(
        sources,
        vocab_size=vocab_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    threads = min(prefetch_buffer_size, 8)
    ds = docs.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    ds = grain.experimental.FlatMapIterDataset(ds, _Chunk(seq_len))
    ds = grain.experimental.FirstFitPackIterDataset(
        ds,
        length_struct={"tokens": seq_len, "loss_mask": seq_len},
        num_packing_bins=packing_bins,
        seed=seed,
        meta_features=("loss_mask",),  # packed and zero-padded, without its own segment ids
    )
    ds = ds.batch(batch_size, drop_remainder=True).map(_rename_packed)
    if num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(ds)


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
