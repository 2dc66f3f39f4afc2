r"""glmvoice-train: train what a config file describes; resume from the workdir's checkpoints.

    glmvoice-train --config configs/NAME.py[:ARGS] --workdir DIR [--config.a.b=V ...] [--dry_run]

Configs are locked ml_collections files: an override naming no field fails with the near names.

Multi-host: run the same command on every host. Processes find each other from
--coordinator_address/--num_processes/--process_id, else JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, else SLURM, else a TPU pod (--distributed forces TPU VM
auto-detection); see glmvoice_jax/distributed.py. Start-up and dead peers are bounded by
--init_timeout_s and --heartbeat_timeout_s: no process waits forever for one that died.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from absl import flags
from ml_collections import config_flags

from glmvoice_jax import errors
from glmvoice_jax.cli import doors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file [:args].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Build shapes only: print parameters and per-device bytes, then exit."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Always call jax.distributed.initialize(), auto-detecting the pod (TPU VM workers started by "
    "gcloud ... ssh --worker=all). Without it, multi-process starts only when flags or the "
    "environment (JAX_*, SLURM, TPU_WORKER_HOSTNAMES) say so.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process' index.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout_s", 300, "Fail if not every process has connected after this many seconds."
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 100, "A process silent this long is dead: all others exit with an error."
)
_SHUTDOWN_TIMEOUT = flags.DEFINE_integer(
    "shutdown_timeout_s", 60, "At exit, wait at most this long for the other processes."
)


def main(argv) -> None:
    del argv
    import jax
    from absl import logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines drown the progress line

    from glmvoice_jax import distributed

    plan = distributed.detect(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, force=_DISTRIBUTED.value
    )
    if _DRY_RUN.value:
        plan = distributed.Plan("single")  # shapes only: no pod needed
    distributed.initialize(
        plan,
        init_timeout_s=_INIT_TIMEOUT.value,
        heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value,
        shutdown_timeout_s=_SHUTDOWN_TIMEOUT.value,
    )
    from glmvoice_jax.trainers import lm, speech_decoder, speech_tokenizer

    config = _CONFIG.value
    # One CLI for every trainer, dispatched on config.trainer through an explicit table.
    trainers = {"lm": lm, "speech_tokenizer": speech_tokenizer, "speech_decoder": speech_decoder}
    if config.trainer not in trainers:
        raise errors.UserError(f"config.trainer {config.trainer!r}; known: {sorted(trainers)}")
    trainer = trainers[config.trainer]
    if _DRY_RUN.value:
        trainer.dry_run(config)
        return
    doors.require(flags.FLAGS, ("workdir",))
    if plan.multi_process:
        print(distributed.describe(), flush=True)
    try:
        summary = trainer.train(config, _WORKDIR.value)
    except Exception:
        if not plan.multi_process:
            raise
        # Leave at once, without the shutdown barrier: peers blocked in a collective with this
        # process then see it die and exit within the heartbeat timeout instead of hanging.
        traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    if jax.process_index() == 0:
        wd = _WORKDIR.value if "://" in _WORKDIR.value else os.path.abspath(_WORKDIR.value)
        logs = wd
        print(f"\ndone: step {summary.get('step')}  loss {summary.get('loss', float('nan')):.4f}")
        print(f"  checkpoints   {wd}/checkpoints")
        print(f"  metrics       {logs}/metrics.jsonl")
        print(f"  tensorboard   {logs}/tensorboard   (tensorboard --logdir {logs}/tensorboard)")
        print(f"  loss plot     {logs}/loss.png")


def _precheck(argv: list[str]) -> None:
    """Fails early, with near names, on overrides that name no config field."""
    from glmvoice_jax import config_lib

    spec, keys = None, []
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            spec = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif a.startswith("--config."):
            keys.append(a[len("--config.") :].split("=", 1)[0])
    if spec is None or not keys:
        return
    try:
        config = config_lib.load_config_file(spec)
        config_lib.check_override_keys(config, keys)
    except (ValueError, FileNotFoundError) as e:
        doors.fail(str(e))


def _stop_during_startup(signum, frame) -> None:
    """SIGTERM / SIGINT before the step loop takes them over: nothing to save, exit 0.

    The process ends here with os._exit: a SystemExit raised from a signal handler is swallowed
    when the signal lands inside a callback (JAX's XLA gc callback, a __del__): Python prints
    "Exception ignored in ..." with a traceback and the run goes on, compiles and trains
    (seen in the issue 17 case table). Before the first step there is nothing to save.
    """
    del frame
    name = signal.Signals(signum).name
    print(
        f"glmvoice-train: {name} during start-up, before the first step: nothing new to save; "
        "exiting 0 (run the same command again to start or resume)",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(0)


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    for sig in (signal.SIGTERM, signal.SIGINT):  # the step loop installs its own (save + exit 0)
        signal.signal(sig, _stop_during_startup)
    _precheck(sys.argv[1:])
    doors.run(main, __doc__, required=("config",))


if __name__ == "__main__":
    run()
