"""The step loop every trainer runs, so that a fix in one trainer cannot miss another.

Both trainers (``lm.py``, ``speech_tokenizer.py``) keep their own step function, data and evals
and share, through :class:`Loop`:

* the workdir check (:func:`check_workdir`) and the stop handling: SIGTERM / SIGINT set a local
  flag (:class:`StopFlag`) and every process votes it each step (:class:`StopVote`), so all
  processes save the same step and leave together even when the signal reached them apart;
* the compile of the step, announced with its time ("compiling train step …"), so the first
  logged interval times steps, not compilation, and MFU is never taken from a compiling step;
* the lagged finiteness check (:func:`check_finite`): NaN/inf stops with the step number, or
  skips the update with ``metrics.on_nonfinite=skip``, without stalling the device queue;
* the cadences (log, checkpoint, total steps), the progress bar (``progress.bar``) and
  metrics.jsonl / TensorBoard (``metrics.MetricWriter``), and the ``debug.sigkill_at_step`` test
  hook that dies hard after a committed checkpoint (kill -9 resume tests);
* where the time goes: each logged interval is split into the host's time blocked in the input
  pipeline (``time/data_wait``), in checkpoint saves after the step in flight finished
  (``time/checkpoint``) and in logging (``time/host``: metrics, TensorBoard, the bar), per step;
  the rest is ``time/device_step`` (the stop vote and NaN check read results one step late, so
  their waits are device time), from which the
  trainers compute throughput and MFU. ``goodput`` is device-step time over wall time for the
  interval, ``goodput_run`` since the process started (start-up and compilation included), and
  ``time/startup`` (logged once) is process start to the first step dispatched. Dispatch is
  asynchronous, so host time counts as lost only where it is spent blocked: an input pipeline
  that keeps ahead of the device shows ~0 data wait;
* ``config.profile`` (``start_step``, ``num_steps``): a jax.profiler trace of those steps in
  ``WORKDIR/profile`` (TensorBoard's profile tab; ``*.trace.json.gz`` opens in Perfetto).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glmvoice_jax import checkpoint, metrics, progress

_IMPORTED = time.time()  # fallback process start where /proc is not available


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), else when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


class Profiler:
    """``config.profile``: traces steps [start_step, start_step + num_steps) into WORKDIR/profile.

    A gs:// workdir is traced into a local folder first and copied when the trace stops.
    """

    def __init__(self, spec: Mapping | None, workdir: str):
        spec = dict(spec or {})
        self.start = int(spec.get("start_step", -1))
        self.stop = self.start + int(spec.get("num_steps", 1))
        self.dest = epath.Path(workdir) / "profile"
        self._local: str | None = None
        self.active = False

    def before_step(self, step: int) -> None:
        """Called with the number of the step about to be dispatched (0-based count of done)."""
        if step == self.start and self.start >= 0:
            local = str(self.dest)
            if "://" in local:
                local = tempfile.mkdtemp(prefix="glmvoice_profile_")
            self._local = local
            jax.profiler.start_trace(local, create_perfetto_trace=True)
            self.active = True

    def after_step(self, step_done: int, out: Mapping[str, Any]) -> None:
        if self.active and step_done >= self.stop:
            jax.block_until_ready(out["loss"])
            self.close()

    def close(self) -> None:
        if not self.active:
            return
        jax.profiler.stop_trace()
        self.active = False
        if self._local is not None and self._local != str(self.dest):
            for path in epath.Path(self._local).rglob("*"):
                if path.is_file():
                    target = self.dest / path.relative_to(self._local)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    path.copy(target, overwrite=True)
            shutil.rmtree(self._local, ignore_errors=True)
        logging.info("profile of steps %d-%d written to %s", self.start, self.stop - 1, self.dest)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; the message names the step."""


def check_workdir(workdir: str) -> None:
    """Creates ``workdir`` (local or gs://) and probes that this process can write there."""
    try:
        root = epath.Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        # One probe per process: on a shared filesystem they would race on one name.
        probe = root / f".write_probe.{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"workdir {workdir} is not writable ({e}); pass a --workdir you can write to"
        ) from e


def check_finite(prev: tuple[int, Any] | None, mode: str) -> int:
    """0, or 1 for a skipped non-finite step (mode "skip"); raises in mode "raise"."""
    if prev is None:
        return 0
    step, finite = prev
    if bool(jax.device_get(finite)):
        return 0
    if mode == "raise":
        raise NonFiniteLossError(
            f"loss or gradient norm became NaN/inf at step {step}; the update was not applied. "
            "Lower the learning rate, check the data, or set --config.metrics.on_nonfinite=skip"
        )
    logging.warning("non-finite loss at step %d: update skipped", step)
    return 1


def warn_no_targets(step: int, fetched: list[Mapping[str, Any]]) -> bool:
    """Warns (one line) when no step of a logged interval counted a loss target; True if so.

    Such an interval reads loss 0 and grad_norm 0: no training, which would look like
    convergence (a source whose loss mask went all 0, e.g. a broken ASR/TTS masking job).
    Steps without a ``tokens_counted`` metric (other trainers) are not judged.
    """
    counts = [f["tokens_counted"] for f in fetched if "tokens_counted" in f]
    if not counts or len(counts) != len(fetched) or float(np.sum(counts)) != 0:
        return False
    logging.warning(
        "step %d: the %d batch(es) since the last log hold no loss targets (loss_mask 0 "
        "everywhere): loss and grad_norm 0 mean nothing was trained; check the sources' loss masks",
        step,
        len(counts),
    )
    return True


class StopFlag:
    """SIGTERM / SIGINT -> save at the current step, then leave the loop (exit 0)."""

    def __init__(self):
        self.set = False
        self.name = ""
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.set = True
        self.name = signal.Signals(signum).name

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class StopVote:
    """Agrees on the stop step across processes: a max over every device's copy of the flag.

    ``poll`` dispatches this step's vote and returns the previous step's result. Reading a result
    one step late keeps the host from stalling the device queue; every process reads the same
    value at the same step, so all stop together. Single-process runs take the same path.
    """

    def __init__(self, mesh: Mesh):
        self._n = mesh.devices.size
        self._sharding = NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))
        replicated = NamedSharding(mesh, PartitionSpec())
        self._max = jax.jit(jnp.max, out_shardings=replicated)
        self._pending = None

    def poll(self, local_flag: bool) -> bool:
        flag = np.int32(local_flag)
        votes = jax.make_array_from_callback(
            (self._n,),
            self._sharding,
            lambda index: np.full(len(range(*index[0].indices(self._n))), flag),
        )
        prev, self._pending = self._pending, self._max(votes)
        return prev is not None and bool(jax.device_get(prev))


def compile_step(jitted, *args, what: str = "train step", announce: bool = True):
    """Lowers and compiles ``jitted`` for ``args``, announcing it and its time.

    Returns the compiled executable (same calling convention, donation included).
    """
    with progress.timed(f"compiling {what}", enabled=announce):
        return jitted.lower(*args).compile()


class Loop:
    """Cadences, stop vote, timing, finiteness, logging and checkpoints of one training run.

    Usage (each trainer)::

        loop = Loop(config, mesh, ckpt, start_step, workdir=workdir, postfix=fmt)
        while loop.running:
            params, train, out = step(params, train, next_batch())
            loop.stepped(out)
            if loop.log_due(extra=eval_now):
                fetched, step_time = loop.fetch()
                loop.log(scalars_from(fetched, step_time))
            loop.checkpoint(params=params, train=train, data_iter=it, meta=meta)
        loop.close()
    """

    def __init__(
        self,
        config: mlc.ConfigDict,
        mesh: Mesh,
        ckpt: checkpoint.Checkpointer,
        start_step: int,
        *,
        workdir: str,
        postfix: Callable[[Mapping[str, float]], str] | None = None,
        desc: str = "train",
    ):
        self.config = config
        self.total = config.total_steps
        self.step = start_step
        self.ckpt = ckpt
        self.is_main = jax.process_index() == 0
        self.writer = metrics.MetricWriter(workdir, resume_step=start_step, enabled=self.is_main)
        console = self.is_main and bool(config.metrics.get("console", True))
        self.bar = progress.bar(self.total, desc, unit="step", initial=start_step, enabled=console)
        self._postfix = postfix
        self._stop = StopFlag()
        self._vote = StopVote(mesh)
        self.stopping = False
        self.skipped = 0
        self.last: dict[str, float] = {}
        self._pending: list[Any] = []
        self._prev: tuple[int, Any] | None = None
        self._t_log = time.time()
        self._steps_since_log = 0
        self._first = True
        self.timed_steps = 0
        self._spent: collections.Counter = collections.Counter()  # host blocked, this interval
        self._productive = 0.0  # device-step seconds since this loop started
        self._process_start = process_start_time()
        self.startup: float | None = None
        self.breakdown: dict[str, float] = {}
        self._profiler = Profiler(config.get("profile"), workdir) if self.is_main else None
        self.writer_has_startup = False

    @property
    def running(self) -> bool:
        return self.step < self.total and not self.stopping

    @contextlib.contextmanager
    def blocked(self, what: str):
        """Times host work outside the step: "data" (the trainer's next batch) or "host"."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._spent[what] += time.perf_counter() - t

    def before_step(self) -> None:
        """Just before dispatching the next step (starts a configured profile)."""
        if self._profiler is not None:
            self._profiler.before_step(self.step)

    def stepped(self, out: Mapping[str, Any]) -> None:
        """After one dispatched step: count it, vote the stop flag, lag the finiteness check."""
        self.step += 1
        if self.startup is None:
            self.startup = time.time() - self._process_start
        if self._first:  # the first step also warms up buffers and input: time from its end
            jax.block_until_ready(out["loss"])
            self._first, self._t_log, self._steps_since_log = False, time.time(), 0
            self._spent.clear()
        else:
            self._steps_since_log += 1
        # Every process votes its local stop flag; all read the same result one step late,
        # so they stop (and save) at the same step even if SIGTERM reached them apart.
        self.stopping = self._vote.poll(self._stop.set)
        self._pending.append(out)
        # The finiteness check lags one step so the host never stalls the device queue.
        mode = self.config.metrics.on_nonfinite
        if self._prev is not None:
            self.skipped += check_finite(self._prev, mode)
        self._prev = (self.step, out["finite"])
        self.bar.update(1)
        if self._profiler is not None:
            self._profiler.after_step(self.step, out)

    def log_due(self, extra: bool = False) -> bool:
        every = self.config.log_every_steps
        return extra or self.step % every == 0 or self.step == self.total or self.stopping

    def fetch(self) -> tuple[list[dict], float]:
        """The interval's per-step metrics (on the host) and its device step time in seconds.

        Also sets ``breakdown`` (module docstring): the interval's per-step split, goodput, and
        (first interval only) the start-up time; trainers add it to their logged scalars.
        """
        self.skipped += check_finite(self._prev, self.config.metrics.on_nonfinite)
        self._prev = None
        fetched = jax.device_get(self._pending)
        warn_no_targets(self.step, fetched)
        now = time.time()
        n = max(self._steps_since_log, 1)
        wall = max(now - self._t_log, 1e-9)
        data, ckpt, host = (self._spent[k] for k in ("data", "checkpoint", "host"))
        # Never 0: the blocked times are measured apart from the device and cannot exceed the
        # wall time by more than timer noise.
        device = max(wall - data - ckpt - host, 1e-3 * wall)
        dt = device / n
        # Steps timed in this interval: 0 when it holds only the first (compiling, warm-up) step,
        # whose dt is not a step time; throughput and MFU must not be logged from it.
        self.timed_steps = self._steps_since_log
        self.breakdown = {}
        if self.timed_steps:
            self._productive += device
            self.breakdown = {
                "time/data_wait": data / n,
                "time/checkpoint": ckpt / n,
                "time/host": host / n,
                "time/device_step": dt,
                "goodput": device / wall,
                "goodput_run": self._productive / max(now - self._process_start, 1e-9),
            }
        if self.startup is not None and not self.writer_has_startup:
            self.breakdown["time/startup"] = self.startup
            self.writer_has_startup = True
        self._pending.clear()
        self._spent.clear()
        self._t_log, self._steps_since_log = now, 0
        return fetched, dt

    def exclude(self, seconds: float) -> None:
        """Takes time spent outside the steps (an eval) out of the next interval's step time."""
        self._t_log += seconds

    def log(self, scalars: dict[str, float], announce: bool = False) -> None:
        """Writes the interval's scalars; ``announce`` also prints them as a line (evals)."""
        with self.blocked("host"):
            scalars = dict(scalars, skipped_steps=float(self.skipped))
            self.writer.write(self.step, scalars)
            if self._postfix is not None:
                line = self._postfix(scalars)
                self.bar.set_postfix_str(line, refresh=False)
                if announce and self.is_main and not self.bar.disable:
                    self.bar.write(f"step {self.step}/{self.total}  {line}")
            self.last = dict(scalars, step=self.step)

    def checkpoint(self, **items: Any) -> None:
        """Saves on the checkpoint cadence, at the last step and when stopping; test kill hook."""
        step = self.step
        if step % self.config.ckpt.every_steps == 0 or step == self.total or self.stopping:
            # The save waits for the step in flight; that wait is device time, not checkpoint.
            jax.block_until_ready([items[k] for k in ("params", "train") if k in items])
            with self.blocked("checkpoint"):
                self.ckpt.save(step, **items)
        if step == self.config.debug.sigkill_at_step:
            # Test hook: die hard once every process has committed this step's checkpoint.
            self.ckpt.wait()
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices(f"sigkill_at_step_{step}")
            os.kill(os.getpid(), signal.SIGKILL)
        if self.stopping:
            self.bar.write(
                f"process {jax.process_index()}: received {self._stop.name or 'a stop vote'}: "
                f"saved step {step}, exiting"
            )

    def close(self) -> None:
        if self._profiler is not None:
            self._profiler.close()
        self.ckpt.close()
        self.bar.close()
        self.writer.close()
        self._stop.restore()
