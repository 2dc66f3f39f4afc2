"""Stage-2 SFT (issue 15): the configs, the 20 : 4 mixture of the two copies, a tiny SFT run."""

import collections
import json
import os

import numpy as np
import pytest

from glmvoice_jax import config_lib
from glmvoice_jax.corpora import dialogue_records
from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.trainers import lm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_9b_sft_config_dry_runs_with_the_papers_recipe(capsys):
    config = config_lib.load_config_file(os.path.join(REPO, "configs/glm4_voice_9b_sft.py"))
    out = lm.dry_run(config)
    assert "parameters: 9,542,557,696" in capsys.readouterr().out
    assert out["mesh"] == {"data": 1, "fsdp": 64, "tensor": 1}
    assert 1.6 * 2**30 < out["total_bytes_per_device"] < 1.8 * 2**30
    model_cfg, layout = config_lib.validate(config)
    assert model_cfg.dropout == 0.5 and layout.special("<|assistant|>")
    s = config.schedule
    assert (s.peak_lr, s.end_lr, config.optim.weight_decay, config.optim.grad_clip_norm) == (
        1e-5,
        1e-6,
        0.1,
        1.0,
    )
    w = {k: v.weight for k, v in config.input.sources.items()}
    assert w["speech_output"] / w["text_output"] == pytest.approx(20 / 4)
    assert config.init_from


@pytest.fixture(scope="module")
def sft_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(30):
        turns = [
            {"role": "user", "speech": rng.integers(0, 512, 20).tolist()},
            {
                "role": "assistant",
                "text": f"answer {i}",
                "speech": rng.integers(0, 512, 40).tolist(),
            },
        ]
        lines.append(json.dumps({"id": f"d{i}", "turns": turns}))
    (root / "d.jsonl").write_text("\n".join(lines) + "\n")
    dialogue_records.write_dialogue_records(
        str(root / "d.jsonl"), str(root / "run" / "sft"), tokenizer="bytes", layout="demo_chat",
        num_shards=2, process_index=0, process_count=1, progress=False,
    )  # fmt: skip
    return str(root / "run")


def _tiny(workdir, steps):
    c = config_lib.load_config_file(
        os.path.join(REPO, f"configs/sft_tiny.py:init_from=,steps={steps}")
    )
    c.model.embed_dim, c.model.num_layers, c.model.mlp_dim = 32, 2, 64
    c.model.num_heads, c.model.num_kv_heads, c.model.head_dim = 2, 1, 16
    c.input.seq_len, c.loss.chunk_size, c.log_every_steps = 256, 128, 1
    c.metrics.console = False
    return c


def test_the_mixture_gives_the_copies_the_20_to_4_epoch_ratio(sft_corpus):
    c = _tiny(sft_corpus, 1)
    specs = input_pipeline.sources_from_config(c.input.sources.to_dict(), sft_corpus)
    stream = input_pipeline.mixed_records(specs, seed=0)
    counts = collections.Counter(stream[i].source for i in range(2400))
    assert counts["speech_output"] / counts["text_output"] == pytest.approx(5.0, rel=0.1)


def test_tiny_sft_trains_with_dropout_on_both_copies(sft_corpus):
    out = lm.train(_tiny(sft_corpus, 3), sft_corpus)
    assert out["step"] == 3 and np.isfinite(out["loss"])
    with open(os.path.join(sft_corpus, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    assert all(np.isfinite(r["speech_loss"]) for r in rows if "speech_loss" in r)


def test_records_of_another_tokenizer_are_refused_before_the_first_step(sft_corpus):
    c = _tiny(sft_corpus, 1)
    _, layout = config_lib.validate(c)
    assert lm.check_chat_records(c, layout, sft_corpus) == 2  # both copies, UTF-8 bytes
    # The same records as if a BPE tokenizer had written them: the trainer refuses to start.
    job_path = os.path.join(sft_corpus, "sft", "text_output", "job.json")
    with open(job_path) as f:
        job = json.load(f)
    ids = job["template_ids"]["text_input"]
    job["template_ids"]["text_input"] = ids[:5] + [7] + ids[6:]
    try:
        with open(job_path, "w") as f:
            json.dump(job, f)
        with pytest.raises(ValueError, match=r"text_output/job.json: .*text-input chat prompt"):
            lm.train(c, sft_corpus)
    finally:
        job["template_ids"]["text_input"] = ids
        with open(job_path, "w") as f:
            json.dump(job, f)
