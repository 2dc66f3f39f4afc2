"""The Grain input pipeline: ArrayRecord shards of ``records.Example`` -> packed per-token batches.

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

Modules, in pipeline order: ``sources`` (shards, records), ``mixture`` (weighted document
stream), ``packing`` (chunks, FirstFit rows, batches), ``resume`` (row streams and their state).
This package re-exports the public names so callers write ``input_pipeline.make_row_iterator``.
"""

from glmvoice_jax.data.input.mixture import mixed_records
from glmvoice_jax.data.input.packing import DEFAULT_PACKING_BINS, record_dataset
from glmvoice_jax.data.input.resume import (
    ROW_STATE_KEY,
    make_iterator,
    make_row_iterator,
    read_row_states,
)
from glmvoice_jax.data.input.sources import (
    RawRecord,
    ShardedRecordSource,
    SourceSpec,
    group_shards,
    list_shards,
    sources_from_config,
)

__all__ = [
    "DEFAULT_PACKING_BINS",
    "ROW_STATE_KEY",
    "RawRecord",
    "ShardedRecordSource",
    "SourceSpec",
    "group_shards",
    "list_shards",
    "make_iterator",
    "make_row_iterator",
    "mixed_records",
    "read_row_states",
    "record_dataset",
    "sources_from_config",
]
