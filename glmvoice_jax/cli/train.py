r"""glmvoice-train: train what a config file describes; resume from the workdir's checkpoints.

    glmvoice-train --config configs/NAME.py[:ARGS] --workdir DIR [--config.a.b=V ...] [--dry_run]

Configs are locked ml_collections files: an override naming no field fails with the near names.
Multi-host: set --coordinator_address/--num_processes/--process_id (or rely on TPU / SLURM
auto-detection through ``jax.distributed.initialize``).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file [:args].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Build shapes only: print parameters and per-device bytes, then exit."
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (auto-detects TPU pods / SLURM)."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process' index.")


def main(argv) -> None:
    del argv
    import jax
    from absl import logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines drown the progress line

    if _DISTRIBUTED.value or _COORDINATOR.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    from glmvoice_jax.trainers import lm

    config = _CONFIG.value
    if _DRY_RUN.value:
        lm.dry_run(config)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    summary = lm.train(config, _WORKDIR.value)
    if jax.process_index() == 0:
        wd = os.path.abspath(_WORKDIR.value)
        print(f"\ndone: step {summary.get('step')}  loss {summary.get('loss', float('nan')):.4f}")
        print(f"  checkpoints   {wd}/checkpoints")
        print(f"  metrics       {wd}/metrics.jsonl")
        print(f"  tensorboard   {wd}/tensorboard   (tensorboard --logdir {wd}/tensorboard)")
        print(f"  loss plot     {wd}/loss.png")


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
        sys.stderr.write(f"glmvoice-train: {e}\n")
        sys.exit(2)


def run() -> None:
    _precheck(sys.argv[1:])
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    run()
