"""launch/ scripts: --dry_run prints the commands a pod, GKE or SLURM launch would run."""

import os
import shlex
import signal
import subprocess
import sys
import time

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
    assert "; cd ~/glmvoice_jax && nohup .venv/bin/glmvoice-train" in remote
    # A dry run says what it would do, never that it started anything.
    assert "would start training on every worker of v5p-pod" in proc.stdout
    assert "started on every" not in proc.stdout
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


def test_tpu_pod_header_advises_setup_after_preemption():
    """New VMs after a spot preemption have no venv: the advice is the full script."""
    with open(os.path.join(REPO, "launch", "tpu_pod.sh")) as f:
        header = f.read().split("set -euo")[0]
    assert "NOT\n# --skip_setup" in header and "new VMs" in header
    assert "copied to WORKDIR every 60 s" in header  # metrics.MetricWriter syncs them


def test_tpu_pod_remote_command_refuses_a_worker_without_setup(guarded_path, tmp_path):
    """The remote train command, run here in a fake HOME: no venv -> exit 3 naming the fix."""
    args = ["--tpu", "t", "--zone", "z", "--workdir", "gs://b/r", "--config", CONFIG]
    proc = _run(guarded_path, "tpu_pod.sh", *args, "--skip_setup", "--dry_run")
    (train,) = _commands(proc.stdout)
    remote = train[-1][len("--command=") :]
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    done = subprocess.run(["bash", "-c", remote], capture_output=True, text=True, env=env)
    assert done.returncode == 3
    assert "has no ~/glmvoice_jax/.venv" in done.stderr and "without --skip_setup" in done.stderr
    # With the venv in place the trainer starts (a stub that records its arguments).
    venv_bin = home / "glmvoice_jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    stub = venv_bin / "glmvoice-train"
    stub.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/trainer_args\n')
    stub.chmod(0o755)
    done = subprocess.run(["bash", "-c", remote], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    for _ in range(100):  # started in the background (nohup ... &)
        if (tmp_path / "trainer_args").exists():
            break
        time.sleep(0.05)
    assert (tmp_path / "trainer_args").read_text().split() == [
        f"--config={CONFIG}",
        "--workdir=gs://b/r",
        "--distributed",
    ]


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
    assert "--max-restarts=50" in xpk and "--termination-grace-period-seconds=300" in xpk
    command = next(a for a in xpk if a.startswith("--command="))
    # exec: the entry (which forwards SIGTERM to the trainer), not a shell, gets the SIGTERM.
    assert "&& exec bash launch/jobset_entry.sh glmvoice-train" in command
    assert "--distributed" in command and "--config.mesh.data=2" in command
    assert "would submit workload glm9b" in proc.stdout and "submitted workload" not in proc.stdout

    proc = _run(
        guarded_path, "gke_xpk.sh", *base, "--docker_image", "gcr.io/p/glm:1", "--max_restarts", "7"
    )
    (xpk,) = _commands(proc.stdout)
    assert "--docker-image=gcr.io/p/glm:1" in xpk and "--max-restarts=7" in xpk
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


def _entry(tmp_path, trainer_body):
    """Starts launch/jobset_entry.sh over a stub trainer script with ``trainer_body``."""
    trainer = tmp_path / "trainer.sh"
    trainer.write_text(f"#!/bin/bash\n{trainer_body}\n")
    trainer.chmod(0o755)
    entry = os.path.join(REPO, "launch", "jobset_entry.sh")
    return subprocess.Popen(
        ["bash", entry, str(trainer), "--workdir=gs://b/r"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_jobset_entry_turns_a_saved_stop_into_the_restart_code(tmp_path):
    """SIGTERM -> forwarded; the trainer saves and exits 0 -> exit 42 (xpk restarts on it)."""
    body = (
        f"trap 'echo saved > {tmp_path}/saved; exit 0' TERM\n"
        f'echo "$@" > {tmp_path}/up\n'
        "for i in $(seq 200); do sleep 0.05; done"
    )
    proc = _entry(tmp_path, body)
    for _ in range(200):
        if (tmp_path / "up").exists():
            break
        time.sleep(0.02)
    assert (tmp_path / "up").read_text().split() == ["--workdir=gs://b/r"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 42, err
    assert (tmp_path / "saved").exists() and "stopped by SIGTERM" in err


@pytest.mark.parametrize("code", [0, 1])
def test_jobset_entry_passes_through_a_finish_or_a_crash(tmp_path, code):
    """A finished run (0) completes the JobSet; a crash (1) fails it: no restart loop."""
    proc = _entry(tmp_path, f"exit {code}")
    proc.communicate(timeout=30)
    assert proc.returncode == code


@pytest.mark.e2e
def test_jobset_entry_over_the_real_trainer_restarts_and_resumes(tmp_path):
    """The JobSet cycle on CPU: SIGTERM -> save, exit 42 -> the same command resumes, exit 0."""
    from glmvoice_jax.corpora import demo_corpus

    corpus = str(tmp_path / "corpus")
    demo_corpus.write_demo_corpus(corpus, docs_per_source=60, num_shards=2)
    wd = str(tmp_path / "run")
    tiny = {
        "model.embed_dim": 32,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.num_kv_heads": 1,
        "model.head_dim": 16,
        "model.mlp_dim": 64,
        "input.seq_len": 64,
        "input.global_batch_size": 8,
        "loss.chunk_size": 32,
        "log_every_steps": 1,
        "ckpt.every_steps": 1000,
        "metrics.console": False,
    }
    args = ["bash", os.path.join(REPO, "launch", "jobset_entry.sh"), sys.executable, "-m"]
    args += ["glmvoice_jax.cli.train", f"--config={REPO}/configs/demo_tiny.py:corpus=synthetic"]
    args += [f"--workdir={wd}", *(f"--config.{k}={v}" for k, v in tiny.items())]
    args += [
        f"--config.input.sources.{n}.paths={corpus}/{n}/*.array_record"
        for n in ("text", "speech", "interleaved")
    ]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.Popen(
        [*args, "--config.total_steps=100000"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = os.path.join(wd, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and os.path.getsize(metrics) and _count_lines(metrics) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 42, err[-2000:]
    from glmvoice_jax import checkpoint

    saved = checkpoint.resolve(os.path.join(wd, "checkpoints"))[1]
    assert saved >= 3
    # The restarted pod runs the same command (here with an end in sight) and resumes.
    done = subprocess.run(
        [*args, f"--config.total_steps={saved + 2}"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed from step {saved}" in done.stdout


def _count_lines(path):
    with open(path) as f:
        return sum(1 for _ in f)
