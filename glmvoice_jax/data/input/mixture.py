"""The weighted document mixture: per-source shuffle + repeat, then mixing by weight.

Mixture weights act on documents, not tokens (jax_stack_notes.md §7.2); calibrate them against
measured token shares (glm4voice.md §12 #17).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import grain
import numpy as np
from absl import logging

from glmvoice_jax.data.input import hf_sources
from glmvoice_jax.data.input.sources import (
    DecodeAndCheck,
    ShardedRecordSource,
    SourceSpec,
    check_has_targets,
    check_sources,
    group_shards,
    list_shards,
)


def _source_seed(seed: int, name: str) -> int:
    # Keyed by name, so adding or reordering sources keeps every other source's order.
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def documents(
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
    docs = mixed_records(sources, seed=seed, shard_group=shard_group, require_targets=True)
    return docs.map(DecodeAndCheck(vocab_size))


def mixed_records(
    sources: Sequence[SourceSpec],
    *,
    seed: int,
    shard_group: tuple[int, int] | None = None,
    require_targets: bool = False,
) -> grain.MapDataset:
    """The global mixed stream of undecoded ``RawRecord``s (which source each one came from).

    ``documents`` decodes exactly this stream; glmvoice-data-stats reads it to measure shares.
    ``shard_group`` = (g, G): only group g's shards (``group_shards``) of every source.
    ``require_targets``: refuse a source whose records carry no target token
    (``check_has_targets``); training streams need it, the statistics job reports such a source.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    parts, weights = [], []
    for spec in check_sources(sources):
        try:
            paths = list_shards(spec.paths)
        except ValueError as e:
            raise ValueError(f"source {spec.name!r}: {e}") from None
        if shard_group is not None:
            paths = group_shards(spec.name, paths, shard_group)
        if spec.format == "array_record":
            source = ShardedRecordSource(spec.name, paths)
        else:  # text rows of Hugging Face parquet / arrow files, tokenized on read
            source = hf_sources.open_source(spec, paths)
        if len(source) == 0:
            raise ValueError(
                f"source {spec.name!r} has no records in its {len(paths)} shard(s) "
                f"(first: {paths[0]}); write data there, or set its weight to 0"
            )
        if require_targets:
            check_has_targets(source)
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
