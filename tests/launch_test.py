"""launch/ scripts: --dry_run prints the commands a pod, GKE or SLURM launch would run."""

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/glm4_voice_9b_pretrain.py"
TOOLS = ("gcloud", "xpk", "sbatch", "srun", "scontrol", "tar")


@pytest.fixture
def guarded_path(tmp_path):
    """PATH whose cloud / scheduler tools record any call, so a dry run can prove it ran none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {tmp_path}/called\nexit 99\n')
        script.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}", tmp_path / "called"


def _run(guarded_path, script, *args, env=None):
    path, called = guarded_path
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "PATH": path},
        timeout=60,
    )
    assert not called.exists(), f"dry run executed: {called.read_text()}"
    return proc


def _commands(stdout):
    """The printed commands, split the way a shell would."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_tpu_pod_dry_run(guarded_path):
    proc = _run(
        guarded_path,
        "tpu_pod.sh",
        "--tpu=v5p-pod",
        "--zone",
        "us-east5-a",
        "--workdir",
        "gs://bucket/run1",
        "--config",
        CONFIG,
        "--project",
        "proj",
        "--dry_run",
        "--",
        "--config.mesh.fsdp=64",
        "--config.input.sources.text.paths=gs://bucket/a b/*",
    )
    assert proc.returncode == 2 and "unknown argument --tpu=v5p-pod" in proc.stderr
    proc = _run(
        guarded_path,
        "tpu_pod.sh",
        "--tpu",
        "v5p-pod",
        "--zone",
        "us-east5-a",
        "--workdir",
        "gs://bucket/run1",
        "--config",
        CONFIG,
        "--project",
        "proj",
        "--dry_run",
        "--",
        "--config.mesh.fsdp=64",
        "--config.input.sources.text.paths=gs://bucket/a b/*",
    )
    assert proc.returncode == 0, proc.stderr
    tar, scp, setup, train = _commands(proc.stdout)
    assert tar[:2] == ["tar", "-czf"] and tar[-1] == "." and REPO in tar
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    for cmd in (scp, setup, train):
        assert "--worker=all" in cmd and "--zone=us-east5-a" in cmd and "--project=proj" in cmd
    assert setup[4:6] == ["ssh", "v5p-pod"]
    assert "pip install -q -e '.[tpu]' gcsfs" in setup[-1]
    remote = train[-1]
    assert remote.startswith("--command=cd ~/glmvoice_jax && nohup .venv/bin/glmvoice-train")
    # The remote shell command parses back into the exact trainer arguments.
    words = shlex.split(remote[len("--command=") :].split("nohup ", 1)[1].split(" > ")[0])
    assert words == [
        ".venv/bin/glmvoice-train",
        f"--config={CONFIG}",
        "--workdir=gs://bucket/run1",
        "--distributed",
        "--config.mesh.fsdp=64",
        "--config.input.sources.text.paths=gs://bucket/a b/*",
    ]
    # --skip_setup: only the train command.
    proc = _run(
        guarded_path,
        "tpu_pod.sh",
        "--tpu",
        "v5p-pod",
        "--zone",
        "z",
        "--workdir",
        "gs://b/r",
        "--config",
        CONFIG,
        "--skip_setup",
        "--dry_run",
    )
    assert len(_commands(proc.stdout)) == 1


def test_tpu_pod_requires_its_arguments(guarded_path):
    proc = _run(guarded_path, "tpu_pod.sh", "--tpu", "x", "--dry_run")
    assert proc.returncode == 2 and "--zone is required" in proc.stderr


def test_gke_xpk_dry_run(guarded_path):
    base = ["--cluster", "c1", "--workload", "glm9b", "--tpu_type", "v5p-128"]
    base += ["--workdir", "gs://bucket/run1", "--config", CONFIG, "--dry_run"]
    proc = _run(
        guarded_path, "gke_xpk.sh", *base, "--num_slices", "2", "--", "--config.mesh.data=2"
    )
    assert proc.returncode == 0, proc.stderr
    (xpk,) = _commands(proc.stdout)
    assert xpk[:3] == ["xpk", "workload", "create"]
    for flag in ("--cluster=c1", "--workload=glm9b", "--tpu-type=v5p-128", "--num-slices=2"):
        assert flag in xpk
    assert f"--script-dir={REPO}" in xpk
    command = next(a for a in xpk if a.startswith("--command="))
    # exec: the trainer, not a shell, receives the pod's SIGTERM.
    assert "&& exec glmvoice-train" in command and "--distributed" in command
    assert "--config.mesh.data=2" in command

    proc = _run(guarded_path, "gke_xpk.sh", *base, "--docker_image", "gcr.io/p/glm:1")
    (xpk,) = _commands(proc.stdout)
    assert "--docker-image=gcr.io/p/glm:1" in xpk
    assert not any(a.startswith("--script-dir") for a in xpk)

    proc = _run(
        guarded_path, "gke_xpk.sh", *[a if a != "gs://bucket/run1" else "/local" for a in base]
    )
    assert proc.returncode == 2 and "must be a gs:// path" in proc.stderr


def test_slurm_gpu_dry_run_submits_then_runs_one_task_per_gpu(guarded_path):
    args = ["--nodes", "4", "--workdir", "/shared/run1", "--config", CONFIG, "--dry_run"]
    proc = _run(guarded_path, "slurm_gpu.sh", *args, "--", "--config.mesh.fsdp=32")
    assert proc.returncode == 0, proc.stderr
    (sbatch,) = _commands(proc.stdout)
    assert sbatch[0] == "sbatch"
    for flag in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--requeue"):
        assert flag in sbatch
    assert "--signal=B:USR1@600" in sbatch
    script = sbatch.index(os.path.join(REPO, "launch", "slurm_gpu.sh"))
    assert "--dry_run" not in sbatch[script:]  # the submitted job runs for real
    assert sbatch[script + 1 : script + 3] == ["--venv", os.path.join(REPO, ".venv")]

    # What the batch job does inside the allocation.
    env = {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "32", "SLURM_PROCID": "0"}
    proc = _run(guarded_path, "slurm_gpu.sh", *args, "--", "--config.mesh.fsdp=32", env=env)
    assert proc.returncode == 0, proc.stderr
    (srun,) = _commands(proc.stdout)
    assert srun[:3] == ["srun", "--ntasks-per-node=8", "--kill-on-bad-exit=1"]
    assert srun[3].endswith("/bin/glmvoice-train")
    assert srun[4:] == [f"--config={CONFIG}", "--workdir=/shared/run1", "--config.mesh.fsdp=32"]
    assert "scontrol requeue 42" in proc.stdout
