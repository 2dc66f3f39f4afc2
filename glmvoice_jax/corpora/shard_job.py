"""The shared skeleton of the offline corpus jobs: input -> numbered ArrayRecord shards.

Every job (text_records, speech_records, interleave_records) turns ``num_inputs`` indexed input
items into ``num_shards`` output shards of ``records.Example``:

* **Deterministic.** Shard i holds the inputs of a fixed contiguous block
  ``[i * N / S, (i + 1) * N / S)``, in input order, and any randomness is seeded per *input item*
  (``item_rng(seed, index)``), so the bytes of a shard depend on nothing but the inputs, the flags
  and the seed: not on timing, process count or which shards ran before.
* **Resumable.** ``records.ShardWriter`` renames a shard to its final name only when complete, and
  a finished shard is skipped on a rerun. A killed job rerun with the same flags produces the same
  files as an uninterrupted run. ``job.json`` in the output folder records the flags; a rerun with
  other flags into the same folder fails instead of mixing two corpora.
* **Local or remote output.** The output folder may be a ``gs://`` (any etils.epath) URI: object
  stores cannot rename, and ArrayRecord writes only local files, so a shard is written into a
  local staging folder (``convert/io/remote.staging_dir``) and copied up, its sidecars first and
  the shard last; the shard's presence still marks it complete, and a rerun skips it.
* **Shardable over processes.** Process p of P writes shards p, p + P, ... (defaults
  ``jax.process_index()`` / ``jax.process_count()``); the processes share nothing but the folder.
  Or over an engine's workers: a job function passes its ``runner`` on to ``run``, and
  ``beam_runner.BeamRunner`` writes every shard as a Beam work item through the same
  ``write_shard`` (CPU-side jobs at scale, with the engine's retries and autoscaling).
* **Bad inputs are skipped, counted and listed.** A producer reports them with ``ShardLog.error``;
  so are documents over ``max_tokens``. Each shard gets ``<shard>.errors.jsonl`` (one
  ``{"index", "id", "reason", "detail"}`` per skipped item) and ``<shard>.stats.json`` (records,
  tokens, speech tokens, errors by reason, producer extras), both written before the shard's
  final rename. ``glmvoice-data-stats`` reads the stats files.
* **Progress** goes to stderr (``glmvoice_jax/progress.py``: a bar on a terminal, one line per
  interval in a log).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import numpy as np
from etils import epath

from glmvoice_jax import files
from glmvoice_jax import progress as progress_lib
from glmvoice_jax.convert.io import remote
from glmvoice_jax.data import records
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.metrics import is_remote

JOB_FILE = "job.json"
# Test hook: SIGKILL this process after writing this many records (a job killed mid-shard).
KILL_ENV = "GLMVOICE_JOB_KILL_AFTER_RECORDS"
STATS_SUFFIX = ".stats.json"
ERRORS_SUFFIX = ".errors.jsonl"

# (shard, input range, log) -> (input index, item id, Example) per kept input.
Producer = Callable[[int, range, "ShardLog"], Iterable[tuple[int, object, records.Example]]]


def default_process() -> tuple[int, int]:
    """(jax.process_index(), jax.process_count()); (0, 1) where JAX is not initialised."""
    import jax  # here, not at the top: only the default asks JAX for its distributed state

    return jax.process_index(), jax.process_count()


def item_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random stream of one input item (independent of sharding and processes)."""
    return np.random.default_rng([seed, stream, index])


def item_seed(seed: int, *keys: int) -> int:
    """A uint32 seed derived from the job seed and integer keys (e.g. document, span)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """Which inputs go to which shard, and which shards this process writes.

    Attributes:
      out_dir: output folder.
      name: shard file prefix, e.g. "text" -> text-00003-of-00016.array_record.
      num_inputs: number of input items.
      num_shards: number of output shards (>= 1).
      process_index: this process.
      process_count: number of processes splitting the shards.
    """

    out_dir: str
    name: str
    num_inputs: int
    num_shards: int
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(
                f"process_index ({self.process_index}) must lie in [0, process_count="
                f"{self.process_count})"
            )
        if self.num_inputs < 0:
            raise ValueError(f"num_inputs must be >= 0, got {self.num_inputs}")

    def shard_path(self, shard: int) -> str:
        return os.path.join(
            self.out_dir, f"{self.name}-{shard:05d}-of-{self.num_shards:05d}.array_record"
        )

    def pattern(self) -> str:
        """Glob of all shards, for ``input_pipeline.SourceSpec.paths``."""
        return os.path.join(self.out_dir, f"{self.name}-*-of-{self.num_shards:05d}.array_record")

    def input_range(self, shard: int) -> range:
        n, s = self.num_inputs, self.num_shards
        return range(shard * n // s, (shard + 1) * n // s)

    def my_shards(self) -> list[int]:
        return list(range(self.process_index, self.num_shards, self.process_count))


class ShardLog:
    """Collects the skipped items and the statistics of one shard."""

    def __init__(self):
        self.errors: list[dict] = []
        self.extra: dict[str, float] = collections.defaultdict(float)

    def error(self, index: int, item_id: object, reason: str, detail: str = "") -> None:
        """Records a skipped input item (reason: a short key such as "empty_text")."""
        self.errors.append(
            {"index": int(index), "id": str(item_id), "reason": reason, "detail": detail[:500]}
        )

    def add(self, key: str, value: float) -> None:
        """Adds to a producer statistic (e.g. interleaved span counts)."""
        self.extra[key] += value


def check_job_file(out_dir: str, params: Mapping) -> None:
    """Writes ``job.json`` or checks that an existing one holds the same params.

    Raises:
      ValueError: the folder holds the output of a job with other parameters.
    """
    root = epath.Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / JOB_FILE
    params = json.loads(json.dumps(dict(params)))  # normalise tuples etc.
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != params:
            diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
            raise ValueError(
                f"{out_dir} holds the output of a job run with other parameters (differing: "
                f"{diff}; see {path}); rerun with the same flags to resume, or use a new output "
                "folder"
            )
        return
    if is_remote(out_dir):  # an object appears whole: no temporary name needed (nor possible)
        path.write_text(json.dumps(params, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    else:
        files.write_json(os.fspath(path), params, sort_keys=True)


def finished_shards(plan: JobPlan) -> set[int]:
    """The shards of ``plan`` that exist (are complete), from one listing of its folder.

    One listing, not a check per shard: on a bucket, 4,096 existence checks are minutes of round
    trips. gcsfs caches listings per process and never sees other processes' writes (a Beam
    worker's), so a remote folder's cached listing is dropped first.
    """
    root = epath.Path(plan.out_dir)
    if is_remote(plan.out_dir):
        epath.backend.fsspec_backend.fs(plan.out_dir).invalidate_cache()
    names = {p.name for p in root.iterdir()} if root.exists() else set()
    return {s for s in range(plan.num_shards) if os.path.basename(plan.shard_path(s)) in names}


@contextlib.contextmanager
def local_staging(out_dir: str, attempt: str) -> Iterator[str]:
    """A fresh, empty local folder where one attempt writes a shard of the remote ``out_dir``.

    ``$GLMVOICE_STAGING/upload/<out_dir without ://>/<attempt>`` (``remote.staging_dir``); what a
    killed attempt of the same name left there is removed first, and the folder on leaving.
    """
    base = remote.staging_dir(out_dir, "upload")
    path = os.path.join(base, attempt)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(base)  # the last attempt out removes the empty base folder


def _upload(write_path: str, path: str) -> None:
    """Copies a staged shard and its sidecars to the remote ``path``, the shard last.

    Each file is replaced whole, as the local runner's renames do (``remote.publish`` would keep
    a file of the same size, e.g. a stale ``.stats.json``). An object appears only when its
    upload completes, so the shard, copied last, still marks the shard complete.
    """
    for suffix in (ERRORS_SUFFIX, STATS_SUFFIX, ""):
        with open(write_path + suffix, "rb") as f, epath.Path(path + suffix).open("wb") as g:
            shutil.copyfileobj(f, g, remote.COPY_CHUNK)


class Runner(Protocol):
    """Where a job's shards are written: ``run``'s loop by default, or ``beam_runner.BeamRunner``.

    A job function passes its ``runner`` argument on to ``run``; a runner receives what ``run``
    receives and returns the same totals.
    """

    def run(
        self,
        plan: JobPlan,
        produce: Producer,
        *,
        params: Mapping,
        layout: token_layout_lib.TokenLayout | None,
        max_tokens: int | None,
        progress: bool,
    ) -> dict: ...


def write_shard(
    plan: JobPlan,
    produce: Producer,
    shard: int,
    *,
    layout: token_layout_lib.TokenLayout | None = None,
    max_tokens: int | None = None,
    staging_dir: str | None = None,
    on_item: Callable[[], None] | None = None,
    on_record: Callable[[], None] | None = None,
) -> dict:
    """Writes one shard and its sidecars; the same bytes whichever runner calls it.

    The shard's final rename marks it complete, after its ``.errors.jsonl`` / ``.stats.json``.
    With ``staging_dir`` (a folder of this attempt only) all three are written there and then
    moved into ``plan.out_dir``, sidecars first: two attempts at one shard (a retried or a
    duplicated work item of a distributed engine) never share a temporary file, and since both
    write the same bytes, whichever rename lands last leaves the same shard. A remote
    ``plan.out_dir`` is always written through a local ``staging_dir`` (a fresh one when none is
    given) and the files are copied up in the same order.

    Args:
      plan: the shard plan.
      produce: the job's producer (see ``run``).
      shard: the shard to write.
      layout: counts speech vs text tokens in the stats when given.
      max_tokens: documents longer than this are skipped as "over_long".
      staging_dir: write here first, then move (or copy, to a remote folder) into
        ``plan.out_dir``.
      on_item: called once per input item the producer yields (progress).
      on_record: called once per record written (the kill-test hook of ``run``).

    Returns:
      The shard's stats (what ``<shard>.stats.json`` holds).
    """
    path = plan.shard_path(shard)
    if staging_dir is None and is_remote(plan.out_dir):
        with local_staging(plan.out_dir, uuid.uuid4().hex) as staging:
            return write_shard(
                plan,
                produce,
                shard,
                layout=layout,
                max_tokens=max_tokens,
                staging_dir=staging,
                on_item=on_item,
                on_record=on_record,
            )
    write_path = path if staging_dir is None else os.path.join(staging_dir, os.path.basename(path))
    log = ShardLog()
    stats = collections.Counter()
    with records.ShardWriter(write_path) as writer:
        for index, item_id, ex in produce(shard, plan.input_range(shard), log):
            if on_item is not None:
                on_item()
            n = len(ex.tokens)
            if max_tokens is not None and n > max_tokens:
                log.error(index, item_id, "over_long", f"{n} tokens > max_tokens {max_tokens}")
                continue
            writer.write(ex)
            stats["records"] += 1
            stats["tokens"] += n
            stats["loss_tokens"] += int(ex.loss_mask.sum())
            if layout is not None and layout.num_audio_tokens:
                stats["speech_tokens"] += int(layout.is_audio(ex.tokens).sum())
            stats[f"kind_{ex.kind}"] += 1
            if on_record is not None:
                on_record()
        shard_stats = {
            **stats,
            "inputs": len(plan.input_range(shard)),
            "errors": len(log.errors),
            "errors_by_reason": dict(collections.Counter(e["reason"] for e in log.errors)),
            "extra": dict(log.extra),
        }
        # Sidecars first: the shard's final rename (on leaving the block) marks completion.
        files.write_jsonl(write_path + ERRORS_SUFFIX, log.errors, ensure_ascii=False)
        files.write_json(write_path + STATS_SUFFIX, shard_stats, sort_keys=True)
    if staging_dir is not None and is_remote(plan.out_dir):
        _upload(write_path, path)
    elif staging_dir is not None:
        for suffix in (ERRORS_SUFFIX, STATS_SUFFIX, ""):
            os.replace(write_path + suffix, path + suffix)
    return shard_stats


def run(
    plan: JobPlan,
    produce: Producer,
    *,
    params: Mapping,
    layout: token_layout_lib.TokenLayout | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
    runner: Runner | None = None,
) -> dict:
    """Writes this process' unfinished shards (or hands the job to ``runner``).

    Args:
      plan: the shard plan.
      produce: (shard, input range, log) -> iterable of (input index, item id, Example); it
        reports skipped inputs through ``log.error``.
      params: the job's flags, recorded in ``job.json`` (compared on reruns).
      layout: counts speech vs text tokens in the stats when given.
      max_tokens: documents longer than this are skipped as "over_long".
      progress: show a progress line.
      runner: another runner for the same shards (e.g. ``beam_runner.BeamRunner``); by default
        this process writes ``plan.my_shards()`` itself.

    Returns:
      Totals over the shards written now: {"written", "skipped", "records", "tokens", "errors",
      "errors_by_reason"}.
    """
    if runner is not None:
        return runner.run(
            plan, produce, params=params, layout=layout, max_tokens=max_tokens, progress=progress
        )
    check_job_file(plan.out_dir, job_params(plan, params))
    mine = plan.my_shards()
    kill_after = int(os.environ.get(KILL_ENV, "0"))
    total_items = sum(len(plan.input_range(s)) for s in mine)
    bar = progress_lib.bar(total_items, f"[{plan.name}]", "item", enabled=progress)
    written_records = 0

    def on_record() -> None:
        nonlocal written_records
        written_records += 1
        if kill_after and written_records >= kill_after:
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    totals = new_totals()
    done = finished_shards(plan)
    # A remote folder's shards go through a local folder named after this process, so a rerun
    # after a kill clears what the killed attempt left there.
    remote = is_remote(plan.out_dir)
    for shard in mine:
        if shard in done:
            totals["skipped"] += 1
            bar.update(len(plan.input_range(shard)))  # finished by an earlier run
            continue
        with (
            local_staging(plan.out_dir, f"process-{plan.process_index}")
            if remote
            else contextlib.nullcontext()
        ) as staging:
            stats = write_shard(
                plan,
                produce,
                shard,
                layout=layout,
                max_tokens=max_tokens,
                staging_dir=staging,
                on_item=lambda: bar.update(1),
                on_record=on_record,
            )
        add_shard(totals, stats)
        bar.set_postfix_str(
            f"shards {totals['written'] + totals['skipped']}/{len(mine)} "
            f"records {totals['records']:,} errors {totals['errors']:,}",
            refresh=False,
        )
    bar.close()
    return totals


def job_params(plan: JobPlan, params: Mapping) -> dict:
    """What ``job.json`` records: the job's flags plus the shard count and name."""
    return {**params, "num_shards": plan.num_shards, "name": plan.name}


def new_totals() -> dict:
    """The empty totals of ``run``."""
    totals = dict.fromkeys(("written", "skipped", "records", "tokens", "errors"), 0)
    return {**totals, "errors_by_reason": {}}


def add_shard(totals: dict, stats: Mapping) -> None:
    """Adds one written shard's stats (``write_shard``'s result) to ``run``'s totals."""
    totals["written"] += 1
    totals["records"] += stats.get("records", 0)
    totals["tokens"] += stats.get("tokens", 0)
    totals["errors"] += stats["errors"]
    reasons = collections.Counter(totals["errors_by_reason"])
    reasons.update(stats["errors_by_reason"])
    totals["errors_by_reason"] = dict(reasons)


def report(plan: JobPlan, totals: Mapping) -> None:
    """Prints the summary line of a job and where its errors are listed."""
    print(
        f"{plan.name}: wrote {totals['written']} shard(s), skipped {totals['skipped']} finished; "
        f"{totals['records']:,} records, {totals['tokens']:,} tokens; {totals['errors']:,} inputs "
        f"skipped {dict(totals['errors_by_reason'])}"
    )
    if totals["errors"]:
        print(f"  reasons per input: {plan.out_dir}/*{ERRORS_SUFFIX}")
    print(f"  shards: {plan.pattern()}")
