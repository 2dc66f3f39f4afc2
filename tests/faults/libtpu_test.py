"""A CPU-only machine with libtpu installed: the tools print no libtpu errors (issue 17 item 8).

JAX initialises its TPU backend whenever libtpu is importable; with no TPU, libtpu prints
INVALID_ARGUMENT lines about TPU_WORKER_HOSTNAMES to stderr. glmvoice_jax/cli/__init__.py sets
JAX_PLATFORMS=cpu before JAX is imported there. The e2e check needs libtpu, which the project's
venv does not have (it comes with the ``tpu`` extra), so it skips without it. To run it on a CPU
machine without touching the project's venv:

    pip install --no-deps --target /tmp/libtpu "libtpu==0.0.42.1"   # the jax[tpu]==0.10.2 pin
    PYTHONPATH=/tmp/libtpu .venv/bin/pytest -q -m '' tests/faults/libtpu_test.py
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from glmvoice_jax import cli


def test_sets_cpu_only_where_libtpu_is_installed_without_a_tpu(monkeypatch):
    monkeypatch.setattr(cli, "tpu_visible", lambda: False)
    monkeypatch.setattr(cli.os.path, "exists", lambda p: False)  # no GPU device
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    env = {}
    assert cli.quiet_missing_tpu(env, jax_imported=False) and env == {"JAX_PLATFORMS": "cpu"}
    env = {"JAX_PLATFORMS": "tpu"}  # the user's choice stands
    assert not cli.quiet_missing_tpu(env, jax_imported=False) and env["JAX_PLATFORMS"] == "tpu"
    assert not cli.quiet_missing_tpu({}, jax_imported=True)
    monkeypatch.setattr(cli, "tpu_visible", lambda: True)
    assert not cli.quiet_missing_tpu({}, jax_imported=False)
    monkeypatch.setattr(cli, "tpu_visible", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert not cli.quiet_missing_tpu({}, jax_imported=False)


@pytest.mark.e2e
@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (see module doc)"
)
@pytest.mark.skipif(cli.tpu_visible(), reason="a TPU is attached: libtpu has one to find")
def test_score_on_a_cpu_machine_prints_no_libtpu_errors(tiny_lm, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"ids": [257, 258, 65, 66]}) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    cmd = [sys.executable, "-m", "glmvoice_jax.cli.score", f"--checkpoint={tiny_lm}"]
    cmd += [f"--input={inp}", f"--output={out}", "--noprogress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in ("TPU_WORKER_HOSTNAMES", "libtpu", "INVALID_ARGUMENT", "TPU accelerator"):
        assert needle not in proc.stderr, proc.stderr[-3000:]
    assert out.exists()
    # Without the guard (JAX imported first), libtpu is what prints them: the test can fail.
    probe = "import jax; jax.devices()"
    noisy = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300
    )
    assert "TPU_WORKER_HOSTNAMES" in noisy.stderr
