"""Packing: documents -> ``seq_len`` chunks -> FirstFit-packed rows -> batches.

Documents longer than ``seq_len`` are split, never truncated, then packed first-fit with segment
ids and restarting positions (glm4voice.md §12 #15).
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from glmvoice_jax.data.input.mixture import documents
from glmvoice_jax.data.input.sources import SourceSpec

# FirstFit bins per row stream: a packed group of this many rows is emitted at a time.
DEFAULT_PACKING_BINS = 16


class Chunk(grain.experimental.FlatMapTransform):
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


def rename_packed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "tokens": batch["tokens"],
        "segment_ids": batch["tokens_segment_ids"],
        "positions": batch["tokens_positions"],
        "loss_mask": batch["loss_mask"],
    }


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
    docs = documents(sources, vocab_size=vocab_size, seed=seed)
    return docs[process_index::process_count]
