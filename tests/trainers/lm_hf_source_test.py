"""The LM trainer on Hugging Face dataset files (parquet + arrow sources): exact resume.

Slow (three compiles of the tiny model, ~1.5 min under load 10): make test-e2e. The pipeline-level
resume of these sources is in tests/data/input/hf_sources_test.py (default tests).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs", "demo_tiny.py") + ":corpus=synthetic"
OVERRIDES = {  # as tests/trainers/lm_test.py: compiles in seconds
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
def hf_corpus(tmp_path_factory):
    """FineWeb-style parquet (data/CC-MAIN-*/000_0000k.parquet) and a save_to_disk arrow split."""
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    words = ["the", "voice", "model", "reads", "text", "from", "parquet", "and", "arrow", "files"]

    def texts(n):
        return [" ".join(rng.choice(words, rng.integers(3, 25))) for _ in range(n)]

    dump = root / "fineweb" / "data" / "CC-MAIN-2024-10"
    dump.mkdir(parents=True)
    for k in range(2):
        t = texts(40)
        table = pa.table({"text": t, "id": [f"<urn:{k}:{i}>" for i in range(40)]})
        pq.write_table(table, dump / f"000_{k:05d}.parquet", row_group_size=16)
    split = root / "books" / "train"
    split.mkdir(parents=True)
    table = pa.table({"content": texts(30)})
    with pa.ipc.new_stream(split / "data-00000-of-00001.arrow", table.schema) as w:
        w.write_table(table)
    return {
        "web": {
            "paths": str(dump / "*.parquet"),
            "weight": 2.0,
            "format": "parquet",
            "tokenizer": "bytes",
            "layout": "demo",
        },
        "books": {
            "paths": str(split / "*.arrow"),
            "weight": 1.0,
            "format": "arrow",
            "tokenizer": "bytes",
            "layout": "demo",
            "column": "content",
        },
    }


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


_KILLED_RUN = """
import json, sys
import ml_collections as mlc
from glmvoice_jax import config_lib
from glmvoice_jax.trainers import lm
sources, overrides, workdir = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
c = config_lib.load_config_file(sys.argv[4])
for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
c.input.sources = mlc.ConfigDict(sources)
lm.train(c, workdir)
"""


@pytest.mark.e2e
def test_hf_sources_sigkill_and_resume_is_exact(hf_corpus, tmp_path):
    """8 steps straight == kill -9 at step 6 (last checkpoint 4), resumed to 8 in a new process."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"

    def run(workdir, **extra):
        overrides = {**OVERRIDES, "total_steps": 8, **extra}
        args = [json.dumps(hf_corpus), json.dumps(overrides), workdir, DEMO]
        return subprocess.run(
            [sys.executable, "-c", _KILLED_RUN, *args], env=env, capture_output=True, text=True
        )

    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert run(straight).returncode == 0
    proc = run(killed, **{"debug.sigkill_at_step": 6})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert max(_losses(killed)) == 6
    proc = run(killed)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from step 4" in proc.stdout
    assert _losses(straight) == _losses(killed)  # bitwise equal at every step
    with open(os.path.join(killed, "config.json")) as f:
        assert json.load(f)["input"]["sources"]["web"]["format"] == "parquet"
