import json
import os
import subprocess
import sys

import pytest

from glmvoice_jax import config_lib
from glmvoice_jax.data import stats as data_stats
from glmvoice_jax.data import token_layout
from glmvoice_jax.inference import sampling
from glmvoice_jax.workflows import demo_sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "pretrain_mixture.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    manifest = root / "manifest.jsonl"
    sentences = demo_sources.read_sentences()[:60]
    manifest.write_text(
        "\n".join(
            json.dumps({"id": f"u{i}", "audio": "x.wav", "text": s})
            for i, s in enumerate(sentences)
        )
        + "\n"
    )
    tokens = demo_sources.text_derived_tokens(str(manifest), str(root / "tokens.jsonl"))
    patterns = demo_sources.build_demo_sources(
        str(root / "corpus"),
        manifest=str(manifest),
        tokens=tokens,
        num_text_docs=120,
        num_interleaved_docs=120,
        num_shards=3,
        sampler=sampling.LookupSampler(token_layout.get("demo")),
        progress=False,
    )
    return str(root / "corpus"), patterns


def _config(data_root, **extra):
    args = f"data_root={data_root},seq_len=512,batch=8"
    config = config_lib.load_config_file(f"{CONFIG}:{args}")
    for k, v in extra.items():
        config.input.sources[k].weight = v
    return config


def test_shares_packing_and_interleaving_stats(corpus):
    root, patterns = corpus
    assert sorted(patterns) == ["asr_tts", "interleaved", "speech_only", "text"]
    stats = data_stats.compute(_config(root), ".", num_docs=3000, num_batches=3)
    src = stats["sources"]
    assert stats["docs"] == 3000 and set(src) == set(patterns)
    for r in src.values():  # document shares follow the weights
        assert abs(r["doc_share"] - r["doc_share_configured"]) < 0.03
    assert src["asr_tts"]["kind_asr"] > 0 and src["asr_tts"]["kind_tts"] > 0
    assert src["text"]["speech_tokens"] == 0 and src["speech_only"]["text_tokens"] == 0
    assert src["interleaved"]["speech_spans"] > 0
    job = src["interleaved"]["job"]
    assert 8.5 < job["mean_span_text_tokens"] < 11.5 and abs(job["eta"] - 0.3) < 0.02
    assert job["speech_tokens_per_span_text_token"] == pytest.approx(2.0)
    assert stats["packed"]["fill_ratio"] > 0.8 and stats["packed"]["tokens_per_sec"] > 0
    # The suggested weights hit the token-share targets of the config.
    calibrated = data_stats.compute(
        _config(root, **stats["suggested_weights"]), ".", num_docs=3000, num_batches=0
    )
    assert calibrated["max_token_share_error"] < stats["max_token_share_error"]
    assert calibrated["max_token_share_error"] < 0.03
    text = data_stats.format_report(stats)
    assert "suggested weights" in text and "mean span" in text and "fill" in text


def test_cli_prints_report_and_json(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "stats.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmvoice_jax.cli.data_stats",
            f"--config={CONFIG}:data_root={root},seq_len=512,batch=4",
            "--num_docs=200",
            "--num_batches=1",
            f"--output={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "packed:" in r.stdout and "interleaved" in r.stdout
    assert json.loads(out.read_text())["docs"] == 200
