"""glmvoice-aot: topology names, the CPU path, and (opt-in: needs libtpu) a real TPU compile."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from glmvoice_jax import config_lib
from glmvoice_jax.cli import aot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs", "demo_tiny.py")
TINY = {
    "model.embed_dim": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "model.head_dim": 16,
    "model.mlp_dim": 64,
    "input.seq_len": 64,
    "input.global_batch_size": 8,
    "loss.chunk_size": 32,
}


@pytest.mark.parametrize(
    ("name", "topology", "chips", "wrap"),
    [
        ("v5p-8", "v5:2x2x1", 4, (False, False, False)),
        ("v5p-128", "v5:4x4x4", 64, (True, True, True)),
        ("v5p-512", "v5:4x8x8", 256, (True, True, True)),
        ("v6e-256", "v6e:16x16", 256, (True, True, False)),
        ("v6e-8", "v6e:2x4", 8, (False, False, False)),
        ("2xv6e-256", "v6e:16x16", 512, (True, True, False)),
        ("v4-32", "v4:2x2x4", 16, (False, False, False)),
        ("v5p:4x4x8", "v5:4x4x8", 128, (True, True, True)),
    ],
)
def test_topology_names(name, topology, chips, wrap):
    t = aot.parse_topology(name)
    assert (t.topology_name, t.num_chips, t.wrap) == (topology, chips, wrap)


@pytest.mark.parametrize(
    ("name", "message"),
    [("v7-8", "unknown topology"), ("v5p-12", "not a power of two"), ("v5p-3", "multiple")],
)
def test_bad_topology_names(name, message):
    with pytest.raises(ValueError, match=message):
        aot.parse_topology(name)


def _tiny_config(**extra):
    c = config_lib.load_config_file(DEMO)
    for key, value in {**TINY, **extra}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_cpu_compile_and_benchmark():
    r = aot.report(_tiny_config(**{"model.remat_policy": "full"}), "cpu", 0.5, benchmark_steps=1)
    assert r["chips"] == 8 and r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    mem = r["memory"]
    assert mem["arguments"] > 0 and mem["temps"] > 0
    assert (
        mem["total"]
        == mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temps"] + (mem["code"])
    )
    assert r["measured_step_s"] > 0 and r["remat_policy"] == "full"
    text = aot.format_report(r)
    assert "per-device memory" in text and "measured:" in text


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (tpu extra)")
def test_tpu_topology_compile(tmp_path):
    out = tmp_path / "r.json"
    args = [sys.executable, "-m", "glmvoice_jax.cli.aot", f"--config={DEMO}", "--topology=v5p-8"]
    args += [f"--config.{k}={v}" for k, v in TINY.items()] + [f"--json={out}"]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 x TPU v5" in proc.stdout and "fits" in proc.stdout
    r = json.loads(out.read_text())
    assert r["chips"] == 4 and r["hbm_bytes"] == int(95.74 * 2**30) and r["fits"]
    assert 0 < r["memory"]["total"] < r["hbm_bytes"]
