"""trainers/train_evals: config.evals validated up front, run on live sharded parameters."""

import dataclasses
import os

import jax
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import checkpoint, sharding
from glmvoice_jax.data import token_layout
from glmvoice_jax.evals import story_cloze
from glmvoice_jax.models import glm
from glmvoice_jax.trainers import train_evals

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
WHISPER_VQ = os.path.join(FIXTURES, "whisper_vq")


def test_bad_entries_are_named():
    with pytest.raises(ValueError, match=r"config.evals\[0\]: task must be one of"):
        train_evals.parse([{"task": "mmlu", "every_steps": 5}])
    with pytest.raises(ValueError, match=r"config.evals\[1\]: every_steps must be"):
        train_evals.parse([{"task": "story_cloze", "every_steps": 5, "modes": "t2t"},
                           {"task": "asr", "every_steps": 0}])  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown keys \['every'\]"):
        train_evals.parse([{"task": "asr", "every": 5}])
    with pytest.raises(ValueError, match="needs speech_tokenizer"):
        train_evals.parse([{"task": "asr", "every_steps": 5}])
    assert train_evals.parse(None) == []


def test_evals_run_on_the_live_sharded_params_and_match_the_checkpoint(tiny_lm, tmp_path):
    """The t2t StoryCloze accuracy from live fsdp-sharded params equals the checkpoint's own."""
    meta = checkpoint.read_meta(tiny_lm)
    cfg = checkpoint.model_config_from_meta(meta)
    cfg = dataclasses.replace(cfg, remat_policy="none")
    layout = token_layout.get("demo")
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    _, abstract, shardings = sharding.param_shardings(
        lambda: glm.GLMDecoder(cfg, rngs=nnx.Rngs(0)), mesh, "fsdp"
    )
    params = checkpoint.restore_params(tiny_lm, checkpoint.abstract_like(abstract, shardings))
    tasks = train_evals.parse(
        [
            {"task": "story_cloze", "every_steps": 2, "modes": "t2t", "max_items": 4},
            {"task": "spoken_qa", "every_steps": 3, "items": str(tmp_path / "missing.jsonl"),
             "speech_tokenizer": WHISPER_VQ},
        ]
    )  # fmt: skip
    evals = train_evals.TrainEvals(
        tasks, cfg, layout, mesh, "fsdp", shardings, str(tmp_path), text_checkpoint=None
    )
    assert [t.task for t in evals.due(6)] == ["story_cloze", "spoken_qa"]
    assert evals.due(5) == []
    out = evals.run(2, params)
    want = story_cloze.evaluate(
        tiny_lm, story_cloze.DEMO_ITEMS, speech_tokenizer=None, cache_dir="", modes=["t2t"],
        max_items=4,
    )  # fmt: skip
    assert out["eval/story_cloze/t2t_accuracy"] == want["t2t_accuracy"]
    assert os.path.exists(tmp_path / "evals" / "story_cloze-2.items.jsonl")
    # A failing task (its items file is missing) is logged and skipped; the others still run.
    out = evals.run(6, params)
    assert "eval/story_cloze/t2t_accuracy" in out
    assert not any(k.startswith("eval/spoken_qa/") for k in out)
    assert all(np.isfinite(v) for v in out.values())
    assert jax.tree.leaves(params)[0].sharding == jax.tree.leaves(shardings)[0]
