import glob
import os
import subprocess
import sys

import pytest

from glmvoice_jax import config_lib
from glmvoice_jax.trainers import lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_validates(path):
    config = config_lib.load_config_file(path)
    if "cells" in config:  # a glmvoice-ablate sweep: every cell's tokenizer config validates
        from glmvoice_jax.workflows import ablation

        for cell in config.cells.values():
            config_lib.validate(config_lib.load_config_file(ablation.resolve(cell.tokenizer)))
        return
    if config.trainer == "speech_decoder":  # validated by its trainer (config_lib knows 2)
        from glmvoice_jax.trainers import speech_decoder

        speech_decoder.validate(config)
        return
    config_lib.validate(config)
    if config.trainer != "lm":
        return
    for key in (
        "total_steps",
        "log_every_steps",
        "ckpt.every_steps",
        "ckpt.keep",
        "input.global_batch_size",
        "input.seq_len",
        "init_from",
        "seed",
    ):
        node = config
        for part in key.split("."):
            node = node[part]


def test_dry_run_of_the_9b_config(capsys):
    config = config_lib.load_config_file(os.path.join(REPO, "configs/glm4_voice_9b_pretrain.py"))
    out = lm.dry_run(config)
    printed = capsys.readouterr().out
    assert "parameters: 9,542,557,696" in printed
    assert out["parameters"] == 9_542_557_696
    assert out["mesh"] == {"data": 1, "fsdp": 256, "tensor": 1}
    # fp32 params sharded 256 ways (+ Adam mu, nu): ~447 MiB per device.
    assert 400 * 2**20 < out["total_bytes_per_device"] < 460 * 2**20


def _demo():
    return config_lib.load_config_file(os.path.join(REPO, "configs/demo_tiny.py:corpus=synthetic"))


def test_validation_errors_name_the_field():
    c = _demo()
    for s in c.input.sources.values():
        s.weight = 0.0
    with pytest.raises(ValueError, match="weights sum to 0"):
        config_lib.validate(c)
    c = _demo()
    c.input.global_batch_size = 10
    c.optim.grad_accum_steps = 4
    with pytest.raises(ValueError, match=r"global_batch_size \(10\) must be divisible"):
        config_lib.validate(c)
    c = _demo()
    c.model.variant = "tinny"
    with pytest.raises(ValueError, match="did you mean tiny"):
        config_lib.validate(c)
    c = _demo()
    c.loss.chunk_size = 100
    with pytest.raises(ValueError, match="must divide input.seq_len"):
        config_lib.validate(c)


def test_unknown_override_lists_near_names():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmvoice_jax.cli.train",
            "--config=configs/demo_tiny.py",
            "--workdir=/tmp/unused",
            "--config.ckpt.evry_steps=3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "unknown config key 'ckpt.evry_steps'" in proc.stderr
    assert "ckpt.every_steps" in proc.stderr


def test_unwritable_workdir_fails_before_compiling(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        lm.train(_demo(), str(blocker / "workdir"))


def test_empty_or_missing_source_fails_at_start(tmp_path):
    c = _demo()
    c.total_steps = 1
    for name in c.input.sources:
        c.input.sources[name].paths = str(tmp_path / name / "*.array_record")
    with pytest.raises(ValueError, match="matches no file"):
        lm.train(c, str(tmp_path / "wd"))
