"""Length caps where memory would explode (issue 17 item 8): tokenize, score, chat.

glmvoice-decode's cap (speech_decoding.MAX_TOKENS) is tested in tests/cli/decode_test.py. Each
cap refuses (or, for a tokenize input, skips and lists) with one line naming the input, the
length, the limit and what to do; the limits are lowered here so that small files reach them.
"""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import soundfile
from absl import flags

from glmvoice_jax import errors
from glmvoice_jax.cli import chat as chat_cli
from glmvoice_jax.cli import score as score_cli
from glmvoice_jax.cli import tokenize_audio
from glmvoice_jax.inference import scoring, tokenizing_job

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "whisper_vq")


def test_tokenize_skips_a_too_long_file_and_groups_the_rest(tmp_path, monkeypatch):
    d = tmp_path / "audio"
    d.mkdir()
    for name in ("v0_hi", "v1_fox", "v4_num"):
        shutil.copy(os.path.join(FIXTURE, "audio", f"{name}.wav"), d)
    rng = np.random.default_rng(0)
    soundfile.write(d / "zz_long.wav", 0.1 * rng.standard_normal(16000 * 5), 16000)
    monkeypatch.setattr(tokenizing_job, "MAX_AUDIO_SECONDS", 4.0)
    monkeypatch.setattr(tokenizing_job, "GROUP_SECONDS", 3.5)  # v1 + v4 > 3.5 s: two groups
    loads = []
    real_load = tokenizing_job.audio.load_audio
    monkeypatch.setattr(
        tokenizing_job.audio, "load_audio", lambda p: loads.append(p) or real_load(p)
    )
    out = tmp_path / "tokens.jsonl"
    args = ["--checkpoint", FIXTURE, "--input", str(d), "--output", str(out)]
    stats = tokenize_audio.main(["glmvoice-tokenize", *args])
    assert stats["files"] == 3 and stats["skipped"] == 1
    with open(os.path.join(FIXTURE, "expected_tokens.jsonl")) as f:
        expected = {r["id"]: r["tokens"] for r in map(json.loads, f)}
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["id"]: r["tokens"] for r in rows} == {
        k: expected[k] for k in ("v0_hi", "v1_fox", "v4_num")
    }
    errs = (tmp_path / "tokens.jsonl.errors.jsonl").read_text().splitlines()
    (err,) = [json.loads(x) for x in errs]
    assert err["id"] == "zz_long" and err["reason"].startswith("too long: 0.00 h of audio")
    assert "split it" in err["reason"]
    assert not [p for p in loads if p.endswith("zz_long.wav")]  # refused from its header


def test_score_refuses_a_sequence_over_the_cap_before_loading(tiny_lm, tmp_path, monkeypatch):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"ids": [1, 2, 3]}) + "\n" + json.dumps({"ids": [5] * 40}) + "\n")
    args = ["glmvoice-score", "--checkpoint", tiny_lm, "--input", str(inp), "--output", str(out)]
    monkeypatch.setattr(scoring, "MAX_TOKENS", 32)
    monkeypatch.setattr(
        scoring.Scorer, "__init__", lambda *a, **k: pytest.fail("weights loaded before the check")
    )
    with pytest.raises(ValueError, match=r"in.jsonl:2: the sequence has 40 tokens, over the 32"):
        score_cli.main(args + ["--attention_impl=chunked"])
    # attention "xla": the bound comes from heads x T^2 float32 scores, with the way out.
    monkeypatch.setattr(scoring, "MAX_TOKENS", 1 << 20)
    monkeypatch.setattr(scoring, "XLA_ATTENTION_BYTES", 8 * 32 * 32 * 4)
    with pytest.raises(ValueError, match=r"over the 32 .*attention_impl=chunked"):
        score_cli.main(args + ["--attention_impl=xla"])
    assert not out.exists()


def test_score_limits():
    import dataclasses

    from glmvoice_jax.models import glm

    cfg = dataclasses.replace(glm.VARIANTS["tiny"], num_heads=32, attention_impl="xla")
    assert scoring.max_tokens(cfg)[0] == 8192  # 32 x 8192^2 x 4 B = 8 GiB
    chunked = scoring.max_tokens(dataclasses.replace(cfg, attention_impl="chunked"))
    assert chunked[0] == scoring.MAX_TOKENS == 131072


def test_chat_refuses_a_huge_context_before_loading(tiny_lm, tmp_path):
    args = ["glmvoice-chat", "--checkpoint", tiny_lm, "--speech_tokenizer", FIXTURE]
    args += ["--speech_decoder", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]
    args += ["--text", "hi", "--max_context", str(10**8)]
    with pytest.raises(flags.IllegalFlagValueError, match=r"--max_context 100000000 must lie in"):
        chat_cli.main(args)
    try:
        chat_cli.main(args)
    except flags.IllegalFlagValueError as e:
        assert "KV cache alone would take" in str(e) and "\n" not in str(e)


def test_chat_refuses_long_audio_from_its_header(tmp_path):
    wav = str(tmp_path / "q.wav")
    soundfile.write(wav, np.zeros(16000 * 3, np.float32), 16000)
    chat_cli._check_duration(wav, 1280, room=40)  # 3 s at 12.5 Hz = 38 tokens: fits
    with pytest.raises(errors.UserError, match=r"lasts 3.0 s = 38 speech tokens .* room for 30"):
        chat_cli._check_duration(wav, 1280, room=30)
    chat_cli._check_duration(str(tmp_path / "not_audio.bin"), 1280, room=1)  # read_speech judges
    assert glob.glob(str(tmp_path / "*")) == [wav]
