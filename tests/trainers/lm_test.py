"""Trainer tests: the real train() on 8 fake CPU devices with a tiny model and corpus."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import checkpoint, config_lib, sharding
from glmvoice_jax.corpora import demo_corpus
from glmvoice_jax.models import glm
from glmvoice_jax.trainers import lm, loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs", "demo_tiny.py") + ":corpus=synthetic"

# Small enough to compile in seconds; every override is a real --config.* flag.
OVERRIDES = {
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
    "ckpt.every_steps": 4,
    "schedule.warmup_steps": 2,
    "metrics.console": False,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    demo_corpus.write_demo_corpus(str(root / "corpus"), docs_per_source=120, num_shards=2)
    return str(root / "corpus")


def _config(corpus, total_steps=8, **extra):
    c = config_lib.load_config_file(DEMO)
    for key, value in {**OVERRIDES, **extra, "total_steps": total_steps}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    for name in c.input.sources:
        c.input.sources[name].paths = f"{corpus}/{name}/*.array_record"
    return c


def _lines(path):
    with open(path) as f:
        return f.readlines()


def _tb_scalars(logdir):
    """Tags of the scalars in TensorBoard event files (TFRecord framing + Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = set()
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + length + 4
    return tags


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in rows}


def _cli(corpus, workdir, total_steps, *extra):
    args = [
        sys.executable,
        "-m",
        "glmvoice_jax.cli.train",
        f"--config={DEMO}",
        f"--workdir={workdir}",
        f"--config.total_steps={total_steps}",
    ]
    args += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    for name in ("text", "speech", "interleaved"):
        args.append(f"--config.input.sources.{name}.paths={corpus}/{name}/*.array_record")
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    return args + list(extra), env


def test_train_writes_everything_and_resumes(corpus, tmp_path):
    wd = str(tmp_path / "run")
    out = lm.train(_config(corpus, total_steps=4, **{"profile.start_step": 2}), wd)
    assert out["step"] == 4 and np.isfinite(out["loss"])
    traces = [f for _, _, fs in os.walk(os.path.join(wd, "profile")) for f in fs]
    assert any(f.endswith(".xplane.pb") for f in traces), traces
    for name in ("metrics.jsonl", "loss.png", "config.json", "summary.json"):
        assert os.path.exists(os.path.join(wd, name)), name
    tags = _tb_scalars(os.path.join(wd, "tensorboard"))
    assert {"loss", "text_loss", "speech_loss", "mfu", "tokens_per_sec"} <= tags
    row = json.loads(_lines(os.path.join(wd, "metrics.jsonl"))[-1])
    for key in (
        "loss",
        "text_loss",
        "speech_loss",
        "grad_norm",
        "lr",
        "tokens_per_sec",
        "tokens_per_sec_per_device",
        "step_time",
        "mfu",
        "time/data_wait",
        "time/checkpoint",
        "time/host",
        "time/device_step",
        "goodput",
        "goodput_run",
    ):
        assert key in row and np.isfinite(row[key]), key
    assert 0 < row["goodput"] <= 1 and 0 < row["goodput_run"] < row["goodput"]
    assert row["step_time"] == row["time/device_step"]
    # MFU never comes from an interval holding only the compiling first step (it read 301).
    rows = [json.loads(x) for x in _lines(os.path.join(wd, "metrics.jsonl"))]
    assert all(0 < r["mfu"] < 1 for r in rows if "mfu" in r), [r.get("mfu") for r in rows]
    assert sum("time/startup" in r for r in rows) == 1  # process start -> first step, once
    meta = checkpoint.read_meta(os.path.join(wd, "checkpoints"))
    assert checkpoint.model_config_from_meta(meta).embed_dim == 32
    # What a kill -9 during an async save leaves behind: a temporary step directory. It is
    # never taken as the latest checkpoint, and it is cleaned up on the next start.
    partial = os.path.join(wd, "checkpoints", "8.orbax-checkpoint-tmp-1234567")
    os.makedirs(os.path.join(partial, "params"))
    # Running again with more steps resumes from step 4.
    out = lm.train(_config(corpus, total_steps=6), wd)
    assert out["step"] == 6 and sorted(_losses(wd)) == [1, 2, 3, 4, 5, 6]
    assert not os.path.exists(partial)


@pytest.mark.e2e  # 25 s: make test-e2e; exact resume on the same mesh stays in make test
def test_restore_onto_another_mesh(corpus, tmp_path):
    """Saved on data 2 x fsdp 4, restored on fsdp 8: identical values, training continues."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    # A constant schedule, so stopping at 4 of 4 equals passing step 4 of 6.
    mesh_a = {"mesh.data": 2, "mesh.fsdp": 4, "schedule.decay": "constant"}
    mesh_b = {"mesh.data": 1, "mesh.fsdp": 8, "schedule.decay": "constant"}
    lm.train(_config(corpus, total_steps=6, **mesh_a), a)
    lm.train(_config(corpus, total_steps=4, **mesh_a), b)
    lm.train(_config(corpus, total_steps=6, **mesh_b), b)
    la, lb = _losses(a), _losses(b)
    assert [la[s] for s in (1, 2, 3, 4)] == [lb[s] for s in (1, 2, 3, 4)]
    np.testing.assert_allclose([lb[5], lb[6]], [la[5], la[6]], rtol=1e-5)

    cfg = config_lib.model_config(_config(corpus))

    def make():
        return glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))

    ref = None
    for mesh_cfg in ({"data": 2, "fsdp": 4}, {"fsdp": 8}):
        mesh = sharding.make_mesh(mesh_cfg)
        _, abs_params, sh = sharding.param_shardings(make, mesh, "fsdp")
        restored = checkpoint.restore_params(
            os.path.join(b, "checkpoints", "4"), checkpoint.abstract_like(abs_params, sh)
        )
        kernel = restored["layers"]["attn"]["q"]["kernel"]
        assert kernel.sharding.mesh.shape["fsdp"] == mesh_cfg["fsdp"]
        values = jax.tree.map(np.asarray, restored)
        if ref is not None:
            jax.tree.map(np.testing.assert_array_equal, values, ref)
        ref = values


def test_sigkill_and_resume_is_exact(corpus, tmp_path):
    """8 steps straight == 6 steps, kill -9 (last checkpoint at 4), resume to 8."""
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    args, env = _cli(corpus, straight, 8)
    subprocess.run(args, env=env, check=True, capture_output=True)
    args, env = _cli(corpus, killed, 8, "--config.debug.sigkill_at_step=6")
    proc = subprocess.run(args, env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert max(_losses(killed)) == 6
    args, env = _cli(corpus, killed, 8)
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    assert "resumed from step 4" in proc.stdout
    assert _losses(straight) == _losses(killed)  # bitwise equal at every step


def test_sigterm_saves_and_exits_zero(corpus, tmp_path):
    wd = str(tmp_path / "term")
    args, env = _cli(corpus, wd, 100_000)
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics_path = os.path.join(wd, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics_path) and len(_lines(metrics_path)) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM" in out
    saved = checkpoint.resolve(os.path.join(wd, "checkpoints"))[1]
    assert saved == max(_losses(wd)) >= 3


def test_nonfinite_loss_stops_with_the_step(corpus, tmp_path):
    c = _config(corpus, total_steps=6, **{"schedule.peak_lr": 1e30, "optim.grad_clip_norm": 0.0})
    with pytest.raises(loop.NonFiniteLossError, match=r"at step \d"):
        lm.train(c, str(tmp_path / "nan"))


def test_grad_accumulation_matches_full_batch(corpus, tmp_path):
    big = {"input.global_batch_size": 16}
    a = lm.train(_config(corpus, total_steps=2, **big), str(tmp_path / "a"))
    b = lm.train(
        _config(corpus, total_steps=2, **big, **{"optim.grad_accum_steps": 2}), str(tmp_path / "b")
    )
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)


def test_init_from_loads_weights_with_fresh_optimizer(corpus, tmp_path, monkeypatch):
    src = str(tmp_path / "src")
    lm.train(_config(corpus, total_steps=4), src)
    monkeypatch.chdir(tmp_path)
    dst = "dst"  # a relative workdir (what `make demo` passes)
    lm.train(_config(corpus, total_steps=1, init_from=os.path.join(src, "checkpoints")), dst)
    first = _losses(dst)[1]
    assert first < _losses(src)[1] - 0.1  # starts from trained weights, not from scratch


def test_init_from_an_imported_hf_checkpoint(tmp_path):
    """glmvoice-import -> glmvoice-train --config.init_from with architecture and layout from it."""
    from glmvoice_jax.cli import import_checkpoint
    from glmvoice_jax.data import records

    fixture = os.path.join(REPO, "tests", "fixtures", "glm_chatglm")
    ckpt = str(tmp_path / "imported")
    import_checkpoint.main(["glmvoice-import", f"--checkpoint={fixture}", f"--output={ckpt}"])
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "text")
    with records.ShardWriter(str(tmp_path / "text" / "t-0.array_record")) as w:
        for _ in range(64):
            toks = rng.integers(0, 640, int(rng.integers(20, 60))).astype(np.int32)
            w.write(records.Example(toks, np.ones(len(toks), np.uint8), "rand", "text"))
    c = config_lib.load_config_file(DEMO)
    c.total_steps, c.log_every_steps, c.init_from = 2, 1, ckpt
    c.model.variant, c.tokens.layout = "init_from", "init_from"
    c.input.seq_len, c.input.global_batch_size, c.loss.chunk_size = 64, 8, 64
    c.metrics.console = False
    c.input.sources = {"text": {"paths": str(tmp_path / "text" / "*.array_record"), "weight": 1.0}}
    out = lm.train(c, str(tmp_path / "run"))
    assert out["step"] == 2 and np.isfinite(out["loss"])
    meta = checkpoint.read_meta(str(tmp_path / "run" / "checkpoints"))
    assert meta["model"]["vocab_size"] == 640 and meta["token_layout"]["name"] == "imported"


def test_evals_run_during_training(corpus, tmp_path):
    """config.evals: scores logged at their cadence on the live params; a broken task is skipped."""
    wd = str(tmp_path / "run")
    config = _config(corpus, total_steps=4)
    config.evals = [
        {"task": "story_cloze", "every_steps": 2, "modes": "t2t", "max_items": 2},
        {"task": "spoken_qa", "every_steps": 4, "items": str(tmp_path / "missing.jsonl"),
         "speech_tokenizer": str(tmp_path / "no_tokenizer")},
    ]  # fmt: skip
    out = lm.train(config, wd)
    assert out["step"] == 4 and np.isfinite(out["loss"])
    rows = [json.loads(x) for x in _lines(os.path.join(wd, "metrics.jsonl"))]
    evals = [r for r in rows if "eval/story_cloze/t2t_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert not any(k.startswith("eval/spoken_qa/") for r in rows for k in r)
    assert "eval/story_cloze/t2t_accuracy" in _tb_scalars(os.path.join(wd, "tensorboard"))
