"""Sources of the input pipeline: shard listing and per-source random-access records.

A bad record is reported with its source, shard file and record index; readers open lazily
with a bounded number of open files, so sources with thousands of shards work.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
import threading
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


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One corpus of the mixture.

    Attributes:
      name: corpus name, used in error messages and for its shuffle seed.
      paths: glob patterns / files of its ArrayRecord shards.
      weight: relative sampling weight (per document); 0 disables the source.
      format: "array_record" (records written by the corpus jobs), or "parquet" / "arrow":
        text rows of Hugging Face dataset files, tokenized on read (``hf_sources``).
      options: (key, value) pairs of a parquet / arrow source (``hf_sources.OPTIONS``).
    """

    name: str
    paths: tuple[str, ...]
    weight: float
    format: str = "array_record"
    options: tuple[tuple[str, str], ...] = ()


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


class DecodeAndCheck(grain.transforms.Map):
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


_TARGET_PROBES = 64


def check_has_targets(source: ShardedRecordSource) -> None:
    """Refuses a source whose records carry no target token (loss_mask all 0).

    Decodes up to ``_TARGET_PROBES`` records spread evenly over the source; if none has a single
    target the source would "train perfectly" (loss 0, gradient 0), which is a broken masking
    job, never a corpus worth mixing in.

    Raises:
      ValueError: naming the source, how many records were probed and the first shard.
    """
    n = len(source)
    probes = sorted({int(i) for i in np.linspace(0, n - 1, min(n, _TARGET_PROBES))})
    for i in probes:
        raw = source[i]
        ex = records.decode(raw.data, where=f"source {raw.source!r} shard {raw.path} record {i}")
        if np.any(ex.loss_mask):
            return
    raise ValueError(
        f"source {source.name!r} has no target tokens: loss_mask is 0 in all {len(probes)} "
        f"records probed across its {len(source.paths)} shard(s) (first: {source.paths[0]}); "
        "the job that wrote it masked everything: fix its loss mask, or set its weight to 0"
    )


def shard_set(sources: Sequence[SourceSpec]) -> dict[str, list[list]]:
    """Per active source, its resolved shards as sorted [path, size in bytes] pairs.

    Saved with the iterator state, so a resume notices a glob that gained or lost a shard.
    """
    out = {}
    for spec in check_sources(sources):
        try:
            paths = list_shards(spec.paths)
        except ValueError as e:
            raise ValueError(f"source {spec.name!r}: {e}") from None
        sizes = [epath.Path(p).stat().length if _is_url(p) else os.path.getsize(p) for p in paths]
        out[spec.name] = [[p, int(n)] for p, n in zip(paths, sizes, strict=True)]
    return out


def check_shard_set(saved: Mapping[str, Any] | None, now: Mapping[str, Any], allow: bool) -> None:
    """Refuses a resume whose sources resolve to other shards than the saved state's.

    Raises:
      ValueError: naming, per changed source, the shards added, removed or resized, unless
        ``allow`` (the config's ``input.allow_shard_change``).
    """
    if saved is None:  # a state written before shard sets were recorded
        logging.warning("the data state records no shard set; cannot check it against this run")
        return
    lines = []
    for name in sorted(set(saved) | set(now)):
        old = _relative(saved.get(name, []))
        new = _relative(now.get(name, []))
        if old == new:
            continue
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        resized = sorted(p for p in set(old) & set(new) if old[p] != new[p])
        parts = [
            f"{label} {len(ps)} {ps[:3]}{' ...' if len(ps) > 3 else ''}"
            for label, ps in (("added", added), ("removed", removed), ("resized", resized))
            if ps
        ]
        lines.append(f"source {name!r}: " + "; ".join(parts))
    if not lines:
        return
    msg = "the data sources resolve to other shards than at the saved step: " + " | ".join(lines)
    if allow:
        logging.warning("%s; input.allow_shard_change=True: the document order changes", msg)
        return
    raise ValueError(
        f"{msg}. Restore the shards, or set input.allow_shard_change=True to resume anyway "
        "(the document order changes from this step on)"
    )


def _relative(pairs: Sequence[Sequence]) -> dict[str, int]:
    """{path below the shards' common folder: size} of [path, size] pairs.

    Compared instead of absolute paths, so a run directory copied or moved elsewhere (another
    disk, a bucket) still has the same shard set.
    """
    if not pairs:
        return {}
    paths = [str(p) for p, _ in pairs]
    base = (
        os.path.dirname(os.path.commonprefix(paths))
        if len(paths) > 1
        else os.path.dirname(paths[0])
    )
    return {p[len(base) :].lstrip("/"): int(n) for p, n in zip(paths, (n for _, n in pairs))}


def check_sources(sources: Sequence[SourceSpec]) -> list[SourceSpec]:
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


def sources_from_config(cfg_sources: Mapping[str, Mapping], workdir: str) -> list[SourceSpec]:
    """Builds SourceSpecs from a config mapping ``name -> {"paths": ..., "weight": ...}``.

    Args:
      cfg_sources: per source, "paths" (a glob string or a list of them) and "weight" (float).
        "{workdir}" inside a path is replaced by ``workdir``. Optional "format" ("array_record",
        "parquet" or "arrow"); the latter two take "tokenizer", "layout" and "column"
        (``hf_sources.OPTIONS``, checked when the source is opened).
      workdir: the run's work directory.

    Returns:
      The specs, in the mapping's order.

    Raises:
      ValueError: a missing or unknown key, or paths of the wrong type.
    """
    specs = []
    for name, entry in cfg_sources.items():
        entry = dict(entry.items())
        fmt = str(entry.pop("format", "array_record"))
        options = (
            {} if fmt == "array_record" else {k: entry.pop(k) for k in _TABLE_KEYS & set(entry)}
        )
        unknown = sorted(set(entry) - {"paths", "weight"})
        missing = sorted({"paths", "weight"} - set(entry))
        if unknown or missing:
            raise ValueError(
                f"data source {name!r}: each source needs exactly the keys 'paths' and "
                f"'weight' (plus 'format' and, for parquet / arrow, {sorted(_TABLE_KEYS)}); "
                f"missing {missing}, unknown {unknown}"
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
                format=fmt,
                options=tuple(sorted((k, str(v)) for k, v in options.items())),
            )
        )
    return specs


# The option keys of parquet / arrow sources (hf_sources.OPTIONS, which checks their values).
_TABLE_KEYS = {"tokenizer", "layout", "column"}
