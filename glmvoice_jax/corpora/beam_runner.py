r"""The CPU-side corpus jobs on Apache Beam: one work item per shard, retried and scaled by Beam.

``shard_job.run`` writes the shards a process was given and nothing more: the user starts the
processes, a crashed one stays down, a slow one holds up the job. This runner hands the same
shards to a Beam pipeline instead (DirectRunner on one machine; Dataflow, Flink or Spark at
scale), which retries failed work items and spreads the shards over as many workers as it has:

    Create(unfinished shard ids) | Reshuffle | ParDo(write one shard)

The shards are the ones ``shard_job.run`` writes, byte for byte and under the same names, because
each work item calls the same ``shard_job.write_shard`` with the job's own producer.

* **Producers are rebuilt, not pickled.** A producer closes over an open corpus and a tokenizer
  (the interleaving job's over a model), so only the job function and its flags travel to the
  workers (a ``functools.partial`` of a module-level function pickles by reference). Each worker
  calls the job function once (``DoFn.setup``) with a runner that keeps the plan and producer it
  is handed instead of writing, and checks that the plan equals the driver's (same inputs, same
  shard count), so a worker that sees other input files fails instead of writing other shards.
* **Idempotent under retries.** An attempt writes its shard and sidecars into a folder of its
  own (``OUT/.staging/<random>``) and moves them into place, the shard last; a shard that exists
  is complete and is skipped, by the driver when it lists the work and by a worker that gets it
  again. Two attempts at one shard write the same bytes, so whichever move lands last is right.
* **Local or bucket output.** ``OUT`` may be a ``gs://`` (any etils.epath) URI, which workers
  without a shared filesystem all reach: an attempt then writes into a local folder of its own
  on the worker (``shard_job.local_staging``) and copies the files up, the shard last
  (``shard_job.write_shard``); the driver lists and reads the folder through epath.
* **Resumable.** A rerun with the same flags lists only the missing shards; ``job.json`` is
  checked and written once, by the driver, before any shard (a folder holding another job's
  output is refused, as with the process runner).
* **Errors and stats** are the per-shard ``.errors.jsonl`` / ``.stats.json`` of ``write_shard``.
  The driver adds up the totals from the stats files of the shards written by this run (exact
  whatever the retries were); the Beam counters ``glmvoice/records``, ``glmvoice/errors`` and
  ``glmvoice/shards_written`` show progress in the runner's UI while it runs.

Why Beam rather than Ray Data: the jobs are a map over independent shards that write files, the
shape of Beam's batch model (and of the TFDS builders at scale, which run on Beam); Dataflow runs
it with no cluster to keep, Flink / Spark where a cluster exists, and DirectRunner tests it here.
Ray Data is built around a block-shaped data stream with a Ray cluster to run; a job whose output
is a fixed set of named files gains nothing from it.

Usage (see ``data_pipelines/text_records.py``; docs/corpora_at_scale.md §5)::

    python -m data_pipelines.text_records --input ... --out DIR/text --num_shards 4096 \
        --runner beam --beam_options='--runner=DataflowRunner --project=P --region=R \
        --temp_location=gs://B/tmp --setup_file=./setup.py'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures

from etils import epath

from glmvoice_jax.corpora import shard_job
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.metrics import is_remote


def _not_apitools(record: logging.LogRecord) -> bool:
    # Beam's BigQuery client stub logs this on the root logger at import when apitools (the
    # `gcp` extra, which the record jobs do not use) is absent: noise on every job command.
    return not record.getMessage().startswith("apitools not found")


logging.getLogger().addFilter(_not_apitools)
try:
    import apache_beam as beam
    from apache_beam.options import pipeline_options
finally:
    logging.getLogger().removeFilter(_not_apitools)

# Under a local output folder; removed when the pipeline has finished. (A remote folder's attempts
# stage on their worker's disk instead: shard_job.local_staging.)
STAGING_DIR = ".staging"
STATS_READERS = 32  # threads reading the stats files back: one round trip each on a bucket
RUNNERS = ("process", "beam")
_NAMESPACE = "glmvoice"


def define_flags(flags_module) -> None:
    """--runner / --beam_options for the job mains (next to ``corpus_io.add_process_flags``)."""
    flags_module.DEFINE_enum(
        "runner",
        "process",
        RUNNERS,
        "process: this process writes its shards (--process_index/count); beam: an Apache Beam "
        "pipeline writes all of them (--beam_options).",
    )
    flags_module.DEFINE_string(
        "beam_options",
        "",
        "Beam pipeline options with --runner=beam, e.g. '--runner=DataflowRunner --project=P "
        "--region=R --temp_location=gs://B/tmp --setup_file=./setup.py' (default DirectRunner).",
    )


def run_job(job: Callable[..., object], beam_options: str | Sequence[str] = ()) -> object:
    """Runs a job function's shards on Beam; returns what the job function returns.

    Args:
      job: a job function bound to its flags, e.g. ``functools.partial(
        text_records.write_text_records, input_spec, out_dir, tokenizer=..., layout=...)``. It
        must take a ``runner`` keyword and pass it on to ``shard_job.run``, and be picklable
        (a partial of a module-level function with plain arguments).
      beam_options: Beam's own command-line options, as one string or a list.
    """
    if isinstance(beam_options, str):
        beam_options = shlex.split(beam_options)
    return job(runner=BeamRunner(job, beam_options))


class BeamRunner:
    """A ``shard_job.Runner`` that writes a plan's unfinished shards with a Beam pipeline.

    A job function may call ``shard_job.run`` more than once (one plan per output folder, as
    ``dialogue_records`` does): the n-th call runs one pipeline for the n-th plan, and the
    workers rebuild the n-th producer.
    """

    def __init__(self, job: Callable[..., object], beam_options: Sequence[str] = ()):
        self.job = job
        self.beam_options = list(beam_options)
        self._calls = 0

    def run(
        self,
        plan: shard_job.JobPlan,
        produce: shard_job.Producer,
        *,
        params: Mapping,
        layout: token_layout_lib.TokenLayout | None,
        max_tokens: int | None,
        progress: bool,
    ) -> dict:
        del produce, layout, max_tokens  # rebuilt on the workers by calling self.job
        call, self._calls = self._calls, self._calls + 1
        shard_job.check_job_file(plan.out_dir, shard_job.job_params(plan, params))
        done = shard_job.finished_shards(plan)
        todo = [s for s in range(plan.num_shards) if s not in done]
        if progress:
            print(
                f"[{plan.name}] beam: {len(todo)} of {plan.num_shards} shards to write",
                file=sys.stderr,
                flush=True,
            )
        if todo:
            options = pipeline_options.PipelineOptions(self.beam_options)
            with beam.Pipeline(options=options) as p:
                _ = (
                    p
                    | "Shards" >> beam.Create(todo)
                    | "Spread" >> beam.Reshuffle()
                    | "Write" >> beam.ParDo(_WriteShard(self.job, call, plan))
                )
        done = shard_job.finished_shards(plan)
        missing = [plan.shard_path(s) for s in todo if s not in done]
        if missing:
            raise RuntimeError(
                f"the Beam pipeline finished but {len(missing)} shard(s) are missing, e.g. "
                f"{missing[0]}; are the workers writing to another filesystem than this one?"
            )
        if not is_remote(plan.out_dir):
            shutil.rmtree(os.path.join(plan.out_dir, STAGING_DIR), ignore_errors=True)
        totals = shard_job.new_totals()
        totals["skipped"] = plan.num_shards - len(todo)
        paths = [epath.Path(plan.shard_path(s) + shard_job.STATS_SUFFIX) for s in todo]
        with futures.ThreadPoolExecutor(STATS_READERS) as pool:
            for text in pool.map(lambda p: p.read_text(encoding="utf-8"), paths):
                shard_job.add_shard(totals, json.loads(text))
        return totals


class _Capture:
    """A runner that writes nothing: keeps the plan and producer of one ``shard_job.run`` call."""

    def __init__(self, call: int):
        self.call = call
        self.calls = 0
        self.got: tuple | None = None

    def run(self, plan, produce, *, params, layout, max_tokens, progress) -> dict:
        del params, progress
        if self.calls == self.call:
            self.got = (plan, produce, layout, max_tokens)
        self.calls += 1
        return shard_job.new_totals()


def _same_shards(a: shard_job.JobPlan, b: shard_job.JobPlan) -> bool:
    keys = ("out_dir", "name", "num_inputs", "num_shards")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


class _WriteShard(beam.DoFn):
    """Writes the shards it is given (shard ids), skipping those already complete."""

    def __init__(self, job: Callable[..., object], call: int, plan: shard_job.JobPlan):
        self.job = job
        self.call = call
        self.plan = plan
        self.records = beam.metrics.Metrics.counter(_NAMESPACE, "records")
        self.errors = beam.metrics.Metrics.counter(_NAMESPACE, "errors")
        self.written = beam.metrics.Metrics.counter(_NAMESPACE, "shards_written")
        self.skipped = beam.metrics.Metrics.counter(_NAMESPACE, "shards_skipped")

    def setup(self) -> None:
        capture = _Capture(self.call)
        self.job(runner=capture)
        if capture.got is None:
            raise RuntimeError(
                f"the job function made {capture.calls} shard_job.run call(s) on this worker, "
                f"but the driver's call {self.call} wrote {self.plan.out_dir}"
            )
        plan, self._produce, self._layout, self._max_tokens = capture.got
        if not _same_shards(plan, self.plan):
            raise RuntimeError(
                f"this worker sees another job than the driver: {plan} vs {self.plan}; the "
                "workers must read the same input files as the driver"
            )

    @contextlib.contextmanager
    def _staging(self) -> Iterator[str]:
        """A folder of this attempt only: on the worker's disk for a remote output folder."""
        attempt = uuid.uuid4().hex
        if is_remote(self.plan.out_dir):
            with shard_job.local_staging(self.plan.out_dir, attempt) as staging:
                yield staging
            return
        staging = os.path.join(self.plan.out_dir, STAGING_DIR, attempt)
        os.makedirs(staging)
        yield staging
        os.rmdir(staging)

    def process(self, shard: int):
        if epath.Path(self.plan.shard_path(shard)).exists():
            self.skipped.inc()  # a retried or duplicated work item whose shard is done
            return
        with self._staging() as staging:
            stats = shard_job.write_shard(
                self.plan,
                self._produce,
                shard,
                layout=self._layout,
                max_tokens=self._max_tokens,
                staging_dir=staging,
            )
        self.records.inc(stats.get("records", 0))
        self.errors.inc(stats["errors"])
        self.written.inc()
