"""Multi-process start-up and pod layout: ``jax.distributed`` with bounded timeouts, slice meshes.

Every process of a multi-host job runs the same ``glmvoice-train`` command. Before JAX touches a
backend, ``initialize`` connects the processes through the coordination service of process 0.
Where the process count, id and coordinator come from, first match wins:

  1. explicit: ``--coordinator_address`` + ``--num_processes`` + ``--process_id``;
  2. env: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` (GKE / xpk or any
     launcher that exports them);
  3. slurm: ``SLURM_JOB_ID`` ... with ``SLURM_NTASKS > 1``; JAX derives the coordinator from the
     first node and, on GPUs, gives each task the GPU of its ``SLURM_LOCALID``;
  4. tpu: a TPU pod (``TPU_WORKER_HOSTNAMES`` with several hosts, ``MEGASCALE_NUM_SLICES`` > 1, or
     ``--distributed`` on a TPU VM): JAX reads the worker list from the environment or the GCE
     metadata server;
  5. single: none of the above: one process, no coordination service.

Failure semantics (the anchors' top multi-host pain is hangs, anchors.md §12 #11-12, #15):

* start-up is bounded by ``init_timeout_s``: a process that never shows up makes the others fail
  with an error instead of waiting forever;
* every process heartbeats to the coordinator; when one dies (kill -9, OOM, lost host) the
  coordination service marks it unhealthy and every other process is terminated with "the JAX
  distributed service detected fatal errors" within ``heartbeat_timeout_s``;
* a process that raises exits at once without the shutdown barrier (cli/train.py), so its peers
  take the heartbeat path rather than waiting on collectives it will never join;
* ``shutdown_timeout_s`` bounds how long a finishing process waits for the others at exit.

On CPU, cross-process collectives use gloo (``jax_cpu_collectives_implementation``, the default in
jax 0.10.2), which is what the multi-process tests run on.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
from absl import logging

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the job.

    Attributes:
      method: "explicit", "env", "slurm", "tpu" or "single".
      coordinator_address: host:port of process 0's coordination service (None: JAX detects it).
      num_processes: processes in the job (None: JAX detects it).
      process_id: this process, in [0, num_processes) (None: JAX detects it).
    """

    method: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def multi_process(self) -> bool:
        return self.method != "single"


def _int_env(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def detect(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    force: bool = False,
    env: Mapping[str, str] | None = None,
) -> Plan:
    """Decides how to start (see the module docstring for the order).

    Args:
      coordinator_address: host:port of process 0, from a flag.
      num_processes: process count, from a flag.
      process_id: this process' index, from a flag.
      force: ``--distributed``: initialise even when nothing in the environment says multi-host
        (a TPU VM started by ``gcloud ... ssh --worker=all``); JAX auto-detects the parameters.
      env: the environment (default os.environ).

    Returns:
      The plan.

    Raises:
      ValueError: partial explicit flags or env vars, or values out of range.
    """
    env = os.environ if env is None else env
    given = {
        "--coordinator_address": coordinator_address,
        "--num_processes": num_processes,
        "--process_id": process_id,
    }
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(
                f"explicit multi-process start needs all of --coordinator_address, "
                f"--num_processes and --process_id; missing {missing}. Pass all three, or none "
                "of them to auto-detect (SLURM, TPU pod, JAX_* environment variables)"
            )
        plan = Plan("explicit", coordinator_address, int(num_processes), int(process_id))
    elif "JAX_COORDINATOR_ADDRESS" in env and "JAX_NUM_PROCESSES" in env:
        if "JAX_PROCESS_ID" not in env:
            raise ValueError(
                "JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES are set but JAX_PROCESS_ID is not; "
                "export JAX_PROCESS_ID (this process' index) on every process"
            )
        plan = Plan(
            "env",
            env["JAX_COORDINATOR_ADDRESS"],
            _int_env(env, "JAX_NUM_PROCESSES"),
            _int_env(env, "JAX_PROCESS_ID"),
        )
    elif all(v in env for v in _SLURM_VARS) and _int_env(env, "SLURM_NTASKS") > 1:
        plan = Plan("slurm")
    elif force or _tpu_pod(env):
        plan = Plan("tpu")
    else:
        return Plan("single")
    if plan.num_processes is not None and not 0 <= plan.process_id < plan.num_processes:
        raise ValueError(
            f"process_id ({plan.process_id}) must lie in [0, num_processes="
            f"{plan.num_processes}); ids are 0..N-1, one per process"
        )
    return plan


def _tpu_pod(env: Mapping[str, str]) -> bool:
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    slices = env.get("MEGASCALE_NUM_SLICES", "1")
    return len(hosts) > 1 or (slices.isdigit() and int(slices) > 1)


def initialize(
    plan: Plan,
    *,
    init_timeout_s: int = 300,
    heartbeat_timeout_s: int = 100,
    shutdown_timeout_s: int = 60,
) -> None:
    """Joins the job described by ``plan``; a no-op for a single process.

    Must run before anything initialises a JAX backend (jax.devices(), any computation).

    Args:
      plan: from ``detect``.
      init_timeout_s: how long to wait for every process to connect before failing.
      heartbeat_timeout_s: a process silent this long is declared dead and the job is torn down.
      shutdown_timeout_s: how long a finishing process waits for the others at exit.

    Raises:
      ValueError: non-positive timeouts.
      RuntimeError: from JAX when the backend is already initialised or start-up times out.
    """
    if not plan.multi_process:
        return
    for name, value in (
        ("init_timeout_s", init_timeout_s),
        ("heartbeat_timeout_s", heartbeat_timeout_s),
        ("shutdown_timeout_s", shutdown_timeout_s),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be > 0 seconds, got {value}")
    # An explicit plan must not be overridden by a SLURM or TPU environment around it.
    detection = "deactivate" if plan.method in ("explicit", "env") else None
    logging.info("jax.distributed.initialize: %s", plan)
    jax.distributed.initialize(
        coordinator_address=plan.coordinator_address,
        num_processes=plan.num_processes,
        process_id=plan.process_id,
        cluster_detection_method=detection,
        initialization_timeout=init_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=shutdown_timeout_s,
    )


def describe() -> str:
    """One line: process, processes, local and global devices, slices."""
    devices = jax.devices()
    slices = {getattr(d, "slice_index", 0) for d in devices}
    return (
        f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
        f"of {len(devices)} {devices[0].platform} devices, {len(slices)} slice(s)"
    )
