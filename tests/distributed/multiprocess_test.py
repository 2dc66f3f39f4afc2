"""Multi-process training on localhost: 2 and 4 CPU processes joined by jax.distributed (gloo).

Every run is the real CLI (``python -m glmvoice_jax.cli.train``) with the tiny model of
tests/trainers/lm_test.py. The global mesh always has 4 devices (1 x 4, 2 x 2 or 4 x 1), so every
run computes the same global program with the same gloo collectives, and the loss of each step
must match bit for bit whatever the process count, kill or resume. A persistent compilation cache
shared by the runs keeps the repeated compiles cheap.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from glmvoice_jax import checkpoint
from glmvoice_jax.corpora import demo_corpus
from glmvoice_jax.data import input as input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs", "demo_tiny.py") + ":corpus=synthetic"
DEVICES = 4  # global device count of every run
HEARTBEAT_S = 5

OVERRIDES = {
    "model.embed_dim": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "model.head_dim": 16,
    "model.mlp_dim": 64,
    "input.seq_len": 64,
    "input.global_batch_size": 8,
    "input.prefetch_buffer_size": 2,
    "loss.chunk_size": 32,
    "log_every_steps": 1,
    "ckpt.every_steps": 4,
    "schedule.warmup_steps": 2,
    "schedule.decay": "constant",  # so a run stopped at step S equals a longer run up to S
    "metrics.console": False,
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    demo_corpus.write_demo_corpus(str(root / "corpus"), docs_per_source=60, num_shards=2)
    return str(root / "corpus")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def _args(corpus, workdir, total_steps, extra=()):
    args = [
        sys.executable,
        "-m",
        "glmvoice_jax.cli.train",
        f"--config={DEMO}",
        f"--workdir={workdir}",
        f"--config.total_steps={total_steps}",
        f"--heartbeat_timeout_s={HEARTBEAT_S}",
        "--init_timeout_s=120",
        "--shutdown_timeout_s=30",
    ]
    args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    for name in ("text", "speech", "interleaved"):
        args.append(f"--config.input.sources.{name}.paths={corpus}/{name}/*.array_record")
    return args + list(extra)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(corpus, workdir, num_processes, total_steps, *extra, cache=None):
    """Starts num_processes CLI processes sharing DEVICES devices; returns their Popens."""
    port = _free_port()
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // num_processes}",
        JAX_PLATFORMS="cpu",
    )
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=cache,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    procs = []
    for i in range(num_processes):
        dist = [
            f"--coordinator_address=localhost:{port}",
            f"--num_processes={num_processes}",
            f"--process_id={i}",
        ]
        procs.append(
            subprocess.Popen(
                _args(corpus, workdir, total_steps, [*dist, *extra]),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs, timeout=300):
    """Waits for every process; returns [(returncode, stdout, stderr)]."""
    deadline = time.time() + timeout
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def _run(corpus, workdir, num_processes, total_steps, *extra, cache=None, expect=0):
    results = _finish(_launch(corpus, workdir, num_processes, total_steps, *extra, cache=cache))
    for rc, _, err in results:
        assert rc == expect, f"exit {rc}, wanted {expect}:\n{err[-3000:]}"
    return results


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def _wait_for_steps(workdir, procs, n, timeout=240):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        if os.path.exists(path) and len(_losses(workdir)) >= n:
            return
        time.sleep(0.1)
    for p in procs:
        p.kill()
    raise AssertionError(
        f"{workdir}: fewer than {n} steps logged; exits {[p.poll() for p in procs]}"
    )


@pytest.mark.e2e  # 89 s quiet; the SIGTERM and dead-process tests stay in make test
def test_elastic_resume_after_sigterm_and_after_kill(corpus, compile_cache, tmp_path):
    """4 -> 2 processes after SIGTERM, 2 -> 4 after kill -9: every loss equals one process' loss."""
    wd, cache = str(tmp_path / "run"), compile_cache
    # 4 processes; SIGTERM reaches only process 1, yet all stop and save at the same step.
    procs = _launch(corpus, wd, 4, 10_000, cache=cache)
    _wait_for_steps(wd, procs, 3)
    procs[1].send_signal(signal.SIGTERM)
    results = _finish(procs)
    saved = set()
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        saved |= {int(s) for s in re.findall(r"saved step (\d+), exiting", out)}
    assert "received SIGTERM" in results[1][1] and "a stop vote" in results[0][1]
    assert len(saved) == 1, saved
    (stop,) = saved
    assert checkpoint.resolve(os.path.join(wd, "checkpoints"))[1] == stop
    data = os.path.join(wd, "checkpoints", str(stop), "data")
    assert sorted(f for f in os.listdir(data) if f.endswith(".json")) == [
        f"process_{i}-of-4.json" for i in range(4)
    ]
    assert len(input_pipeline.read_row_states(data)["rows"]) == 8

    # 2 processes resume from `stop`, train 3 steps and all die by kill -9.
    kill = f"--config.debug.sigkill_at_step={stop + 3}"
    results = _run(corpus, wd, 2, stop + 5, kill, cache=cache, expect=-signal.SIGKILL)
    assert f"resumed from step {stop}" in results[0][1]
    assert max(_losses(wd)) == stop + 3
    resumed = checkpoint.resolve(os.path.join(wd, "checkpoints"))[1]  # stop, or a multiple of 4

    # 4 processes resume from the last checkpoint the 2 wrote (or `stop`) and finish.
    results = _run(corpus, wd, 4, stop + 5, cache=cache)
    assert f"resumed from step {resumed}" in results[0][1]

    ref = str(tmp_path / "ref")
    _run(corpus, ref, 1, stop + 5, cache=cache)
    got, want = _losses(wd), _losses(ref)
    assert sorted(got) == list(range(1, stop + 6))
    assert got == want  # bitwise, every step


def test_sigterm_to_every_process_saves_one_step_and_exits_zero(corpus, compile_cache, tmp_path):
    """The usual preemption: every host gets SIGTERM, at slightly different times."""
    wd = str(tmp_path / "preempt")
    procs = _launch(corpus, wd, 2, 10_000, cache=compile_cache)
    _wait_for_steps(wd, procs, 2)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    saved = set()
    for rc, out, err in _finish(procs):
        assert rc == 0, err[-3000:]
        assert "received SIGTERM" in out
        saved |= {int(s) for s in re.findall(r"saved step (\d+), exiting", out)}
    assert len(saved) == 1, saved
    assert checkpoint.resolve(os.path.join(wd, "checkpoints"))[1] == saved.pop()


@pytest.mark.e2e  # 28 s: make test-e2e; the SIGTERM case above stays in make test
def test_a_dead_process_makes_the_others_exit(corpus, compile_cache, tmp_path):
    wd = str(tmp_path / "dead")
    procs = _launch(corpus, wd, 2, 10_000, cache=compile_cache)
    _wait_for_steps(wd, procs, 2)
    t0 = time.time()
    procs[1].kill()
    rc, _, err = _finish(procs[:1], timeout=120)[0]
    elapsed = time.time() - t0
    assert rc != 0, "the surviving process must fail, not finish"
    # Either its collective with the dead peer fails at once (gloo), or the coordination
    # service notices the missing heartbeats and terminates it.
    reasons = ("JAX distributed service detected fatal errors", "Gloo")
    assert any(r in err for r in reasons), err[-3000:]
    assert elapsed < HEARTBEAT_S + 30, elapsed
    procs[1].wait()


def test_partial_explicit_flags_fail_fast(corpus, tmp_path):
    proc = subprocess.run(
        _args(corpus, str(tmp_path / "x"), 1, ["--coordinator_address=localhost:1"]),
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=120,
    )
    assert proc.returncode != 0
    assert "missing ['--num_processes', '--process_id']" in proc.stderr
