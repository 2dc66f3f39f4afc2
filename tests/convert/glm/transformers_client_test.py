"""Golden: a GLM trained HERE, exported with --format transformers, loads in transformers.

Issue 17 item 7. A checkpoint trained by glmvoice-train (the tiny demo model on the demo layout:
UTF-8 byte text, 512 speech codes, vocabulary 1,024) is exported with ``glmvoice-export --format
transformers``; ``GlmForCausalLM.from_pretrained`` loads it with no missing or unexpected
weights, its pad/eos/bos ids lie in the vocabulary (from the token layout), ``AutoTokenizer``
loads the exported byte tokenizer and encodes like the project (``[gMASK]<sop>`` + UTF-8 bytes),
and its log-probabilities equal ``glmvoice-score``'s within 1e-4.

Needs the dev-only ``golden`` extra (torch 2.13.0, transformers 4.46.3, tokenizers 0.20.3), so it
is skipped where transformers is not importable (``make test`` runs without it). Run it in a
SEPARATE virtual environment, never the project's .venv:

    python3 -m venv /tmp/goldenvenv
    /tmp/goldenvenv/bin/pip install -e '.[golden,test]'
    /tmp/goldenvenv/bin/pytest -q -m '' tests/convert/glm/transformers_client_test.py

(about a minute on 2 CPU cores; ``-m ''`` because it is marked e2e). Before resolving an issue
that touches the export, run it and say so.
"""

import json
import os
import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from glmvoice_jax import config_lib  # noqa: E402
from glmvoice_jax.cli import export_checkpoint, score  # noqa: E402
from glmvoice_jax.corpora import demo_corpus  # noqa: E402
from glmvoice_jax.data import token_layout  # noqa: E402
from glmvoice_jax.trainers import lm  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
DEMO = os.path.join(REPO, "configs", "demo_tiny.py") + ":corpus=synthetic"
# head_dim x num_heads == embed_dim: transformers 4.46 sizes heads as hidden_size // heads.
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
    "log_every_steps": 2,
    "ckpt.every_steps": 6,
    "schedule.warmup_steps": 2,
    "metrics.console": False,
    "total_steps": 6,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    corpus = str(root / "corpus")
    demo_corpus.write_demo_corpus(corpus, docs_per_source=40, num_shards=1)
    c = config_lib.load_config_file(DEMO)
    for key, value in OVERRIDES.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    for name in c.input.sources:
        c.input.sources[name].paths = f"{corpus}/{name}/*.array_record"
    wd = str(root / "run")
    lm.train(c, wd)
    ckpt, hf = os.path.join(wd, "checkpoints"), str(root / "hf")
    export_checkpoint.main(
        ["glmvoice-export", f"--checkpoint={ckpt}", f"--output={hf}", "--format=transformers"]
    )
    return ckpt, hf, root


def test_config_ids_come_from_the_layout(exported):
    _, hf, _ = exported
    layout = token_layout.get("demo")
    config = json.loads(pathlib.Path(hf, "config.json").read_text())
    assert config["vocab_size"] == 1024
    assert config["pad_token_id"] == config["eos_token_id"] == layout.eos_id == 256
    assert config["bos_token_id"] == layout.special("[gMASK]")
    assert "transformers_version" not in config
    assert config["dtype"] == config["torch_dtype"] == "float32"
    generation = json.loads(pathlib.Path(hf, "generation_config.json").read_text())
    assert generation["eos_token_id"] == 256


def test_tokenizer_encodes_like_the_project(exported):
    _, hf, _ = exported
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    text = "héllo, wörld ✓"
    ids = tok(text)["input_ids"]
    assert ids == [257, 258] + list(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens([259, 512, 1023]) == [
        "<|begin_of_audio|>",
        "<|audio_0|>",
        "<|audio_511|>",
    ]
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (256, 256, 257)


def test_from_pretrained_matches_glmvoice_score(exported):
    ckpt, hf, root = exported
    model, info = transformers.GlmForCausalLM.from_pretrained(hf, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    model = model.float().eval()
    layout = token_layout.get("demo")
    rng = np.random.default_rng(0)
    speech = layout.wrap_audio(rng.integers(0, 512, 40)).tolist()
    seqs = [
        [257, 258] + list(b"the cat sat on the mat.") + [256],
        [257, 258] + speech + [256],
        [257, 258] + list(b"a ") + speech[:9] + list(b" b"),
        [257, 258, 65],
    ]
    inp, out = root / "in.jsonl", root / "out.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "ids": s}) + "\n" for i, s in enumerate(seqs)))
    score.main(
        ["glmvoice-score", f"--checkpoint={ckpt}", f"--input={inp}", f"--output={out}"]
        + ["--noprogress"]
    )
    mine = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    worst = 0.0
    for i, s in enumerate(seqs):
        with torch.no_grad():
            logits = model(torch.tensor([s])).logits[0].float()
        lp = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(s[1:])[:, None])[:, 0]
        diff = np.abs(lp.numpy() - np.asarray(mine[i]["token_logprobs"], np.float32))
        worst = max(worst, float(diff.max()))
    assert worst < 1e-4, worst
    # generate() stops at the layout's end token instead of running to max_new_tokens.
    assert model.generation_config.eos_token_id == 256
    assert model.generation_config.pad_token_id == 256
