"""distributed.detect: where process count, id and coordinator come from; slice-aware meshes."""

import jax
import pytest

from glmvoice_jax import distributed, sharding

SLURM = {
    "SLURM_JOB_ID": "7",
    "SLURM_STEP_NODELIST": "gpu[001-004]",
    "SLURM_NTASKS": "32",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "5",
}


def test_explicit_flags_win_over_the_environment():
    plan = distributed.detect("10.0.0.1:1234", 4, 2, env=SLURM)
    assert plan == distributed.Plan("explicit", "10.0.0.1:1234", 4, 2)
    assert plan.multi_process


def test_partial_flags_name_what_is_missing():
    with pytest.raises(ValueError, match=r"missing \['--process_id'\]"):
        distributed.detect("h:1", 4, None, env={})


def test_jax_environment_variables():
    env = {"JAX_COORDINATOR_ADDRESS": "h:9", "JAX_NUM_PROCESSES": "8", "JAX_PROCESS_ID": "3"}
    assert distributed.detect(env=env) == distributed.Plan("env", "h:9", 8, 3)
    del env["JAX_PROCESS_ID"]
    with pytest.raises(ValueError, match="JAX_PROCESS_ID is not"):
        distributed.detect(env=env)
    env.update(JAX_PROCESS_ID="x")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='x' must be an integer"):
        distributed.detect(env=env)


def test_process_id_out_of_range():
    with pytest.raises(ValueError, match=r"process_id \(4\) must lie in \[0, num_processes=4\)"):
        distributed.detect("h:1", 4, 4, env={})


def test_slurm_with_several_tasks_and_single_task():
    assert distributed.detect(env=SLURM) == distributed.Plan("slurm")
    assert distributed.detect(env={**SLURM, "SLURM_NTASKS": "1"}).method == "single"


def test_tpu_pod_and_forced_detection():
    assert distributed.detect(env={"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}).method == "tpu"
    assert distributed.detect(env={"MEGASCALE_NUM_SLICES": "2"}).method == "tpu"
    assert distributed.detect(env={"TPU_WORKER_HOSTNAMES": "localhost"}).method == "single"
    assert distributed.detect(force=True, env={}).method == "tpu"


def test_nothing_means_one_process_and_initialize_is_a_no_op():
    plan = distributed.detect(env={})
    assert plan == distributed.Plan("single") and not plan.multi_process
    distributed.initialize(plan, init_timeout_s=0)  # never reaches the timeout checks


def test_bad_timeouts_are_rejected_before_jax_is_called():
    with pytest.raises(ValueError, match="heartbeat_timeout_s must be > 0"):
        distributed.initialize(distributed.Plan("explicit", "h:1", 2, 0), heartbeat_timeout_s=0)


def test_single_slice_mesh_is_the_sharding_mesh():
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert mesh.devices.tolist() == sharding.make_mesh({"data": 2, "fsdp": -1}).devices.tolist()
    assert sharding.num_slices(jax.devices()) == 1
    assert "8 cpu devices, 1 slice(s)" in distributed.describe()
