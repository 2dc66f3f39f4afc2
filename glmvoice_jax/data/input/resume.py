"""Row streams and their saved state: the iterator that resumes on any process count.

Global batch row r is always the next packed row of row stream r, so the iterator state (one
position per row) can be resumed by any number of processes (docs/elastic_resume.md).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from etils import epath

from glmvoice_jax.data.input.mixture import documents
from glmvoice_jax.data.input.packing import DEFAULT_PACKING_BINS, Chunk, rename_packed
from glmvoice_jax.data.input.sources import SourceSpec, check_shard_set, shard_set

# Marks the row-stream positions inside a saved iterator state (read_row_states finds them).
ROW_STATE_KEY = "glmvoice_row_streams"


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
    allow_shard_change: bool = False,
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
      allow_shard_change: resume from a ``start_state`` whose recorded shard set (paths and
        sizes per source) differs from what the sources resolve to now. Off by default: the
        document order depends on the shard set, so a glob that gained or lost a shard would
        silently repeat or skip documents; on, the order changes from the resumed step on.

    Returns:
      A grain.DatasetIterator of dicts with int32 [len(rows), seq_len] arrays ``tokens``,
      ``segment_ids``, ``positions`` and ``loss_mask`` (see the module docstring). Its
      ``get_state()`` is JSON; ``read_row_states`` merges the states of all processes.

    Raises:
      ValueError: at construction, for an invalid argument, a start_state of another
        batch/length/packing or missing rows, a start_state recorded over another shard set
        (naming the shards added, removed or resized; see allow_shard_change), a source whose
        paths match nothing, a missing or unreadable shard, a source without records or
        without a single target token (loss_mask all 0), or weights that are negative or sum
        to 0;
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
    shards = shard_set(sources)
    starts = _check_start_state(start_state, layout, rows)
    if start_state is not None:
        check_shard_set(start_state.get("shards"), shards, allow_shard_change)

    block = global_batch_size // groups  # rows per group; the stride of its row streams
    group_docs: dict[int, grain.MapDataset] = {}
    for g in sorted({r // block for r in rows}):
        group = (g, groups) if groups > 1 else None
        group_docs[g] = documents(sources, vocab_size=vocab_size, seed=seed, shard_group=group)
    read = grain.ReadOptions(
        num_threads=min(prefetch_buffer_size, 1), prefetch_buffer_size=prefetch_buffer_size
    )

    def row_stream(r: int) -> grain.IterDataset:
        ds = group_docs[r // block][r % block :: block].to_iter_dataset(read)
        ds = grain.experimental.FlatMapIterDataset(ds, Chunk(seq_len))
        return grain.experimental.FirstFitPackIterDataset(
            ds,
            length_struct={"tokens": seq_len, "loss_mask": seq_len},
            num_packing_bins=packing_bins,
            seed=seed,
            meta_features=("loss_mask",),  # packed and zero-padded, without its own segment ids
        )

    ds = _RowStreams({r: row_stream(r) for r in rows}, layout, starts, (shards, allow_shard_change))
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
        shards: tuple[Mapping[str, Any], bool],
    ):
        self._rows = sorted(streams)
        super().__init__([streams[r] for r in self._rows])
        self._layout = dict(layout)
        self._starts = dict(starts)
        self._shards = shards  # (shard set, allow_shard_change)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        del sequential_slice  # rows are sliced, never records
        self._rows = self._rows[sl]
        self._parents = tuple(self._parents[sl])

    def __iter__(self) -> grain.DatasetIterator:
        return _RowStreamsIterator(
            self._rows, self._parents, self._layout, self._starts, self._shards
        )

    def __str__(self) -> str:
        return f"RowStreams({len(self._rows)} rows of {self._layout})"


class _RowStreamsIterator(grain.DatasetIterator):
    def __init__(self, rows, parents, layout, starts, shards):
        super().__init__([p.__iter__() for p in parents])
        self._rows = list(rows)
        self._layout = layout
        self._shards = shards
        for r, it in zip(self._rows, self._parents, strict=True):
            if r in starts:
                it.set_state(starts[r])

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._parents]
        return rename_packed({k: np.stack([p[k] for p in parts]) for k in parts[0]})

    def get_state(self) -> dict[str, Any]:
        rows = {str(r): it.get_state() for r, it in zip(self._rows, self._parents, strict=True)}
        return {ROW_STATE_KEY: dict(self._layout, rows=rows, shards=self._shards[0])}

    def set_state(self, state: Mapping[str, Any]) -> None:
        starts = _check_start_state(state[ROW_STATE_KEY], self._layout, self._rows)
        check_shard_set(state[ROW_STATE_KEY].get("shards"), *self._shards)
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
      {"global_batch_size", "seq_len", "packing_bins", "rows": {row: state}} covering every row,
      plus "shards" (per source, [path, size] of its resolved shards) when recorded.

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
    layout, merged, shards = None, {}, None
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
            if "shards" in part:
                if shards is not None and part["shards"] != shards:
                    raise ValueError(f"{f}: its recorded shard set differs from the other files'")
                shards = part["shards"]
            layout = this
            merged.update({int(r): s for r, s in part["rows"].items()})
    missing = sorted(set(range(layout["global_batch_size"])) - set(merged))
    if missing:
        raise ValueError(
            f"{data_dir}: the process files cover {len(merged)} of "
            f"{layout['global_batch_size']} rows; missing {missing[:8]}"
        )
    out = dict(layout, rows=merged)
    if shards is not None:
        out["shards"] = shards
    return out
