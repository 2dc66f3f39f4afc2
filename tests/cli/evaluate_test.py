"""glmvoice-eval: the table, the output files and usage errors."""

import dataclasses
import json
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import checkpoint, story_cloze, token_layout
from glmvoice_jax.cli import evaluate
from glmvoice_jax.models import glm


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny random GLM in the demo layout (numpy init: eager NNX init is slow on a busy CPU)."""
    path = str(tmp_path_factory.mktemp("lm") / "ckpt")
    cfg = dataclasses.replace(glm.VARIANTS["tiny"], num_layers=2, remat_policy="none")
    model = nnx.eval_shape(lambda: glm.GLMDecoder(cfg, rngs=nnx.Rngs(0)))
    shapes = nnx.to_pure_dict(nnx.state(model))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            np.ones(x.shape, x.dtype)
            if p[-1].key == "scale"
            else (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
        ),
        shapes,
    )
    meta = checkpoint.model_meta(cfg, token_layout.get("demo"))
    checkpoint.write_weights(path, params, meta)
    return path


def test_text_mode_on_the_demo_items(lm, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    result = evaluate.main(
        ["glmvoice-eval", "--task", "story_cloze", "--checkpoint", lm, "--modes", "t2t",
         "--max_items", "6", "--cache_dir", str(tmp_path / "cache"), "--output", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("story_cloze: 6 items (0 skipped) from ")
    assert printed[0].endswith("story_cloze_demo.jsonl") and printed[2].startswith("t2t ")
    saved = json.loads(out.read_text())
    assert saved == result and saved["items"] == 6 and 0 <= saved["t2t_accuracy"] <= 1
    assert saved["items_path"] == story_cloze.DEMO_ITEMS and saved["task"] == "story_cloze"
    rows = (tmp_path / "res" / "eval.items.jsonl").read_text().splitlines()
    assert saved["per_item"] == str(tmp_path / "res" / "eval.items.jsonl") and len(rows) == 6
    wins = sum(json.loads(r)["t2t"]["correct_chosen"] for r in rows)
    assert saved["t2t_accuracy"] == pytest.approx(wins / 6)
    assert f"{100 * wins / 6:.1f}%" in printed[2]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--checkpoint is required"),
        (["--checkpoint", "CKPT", "--modes", "s2s,x2y"], "must be a non-empty subset"),
        (["--checkpoint", "CKPT", "--items", "/nonexistent.jsonl"], "does not exist"),
        (["--checkpoint", "CKPT"], "need a speech tokenizer checkpoint"),
        (["--checkpoint", "CKPT", "--max_items", "0"], "--max_items must be >= 1"),
        (["--checkpoint", "CKPT", "--task", "wugs"], "task"),
    ],
)
def test_usage_errors_exit_1_with_one_line(lm, tmp_path, capsys, monkeypatch, args, message):
    args = [lm if a == "CKPT" else a for a in args]
    monkeypatch.setattr(sys, "argv", ["glmvoice-eval", *args, "--cache_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.run()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("glmvoice-eval: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
