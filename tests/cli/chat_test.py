"""glmvoice-chat: two turns on tiny models through the command line (e2e: ~1 min on 2 cores)."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from glmvoice_jax.cli import chat as chat_cli
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.models.speech_decoder import config as decoder_config

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
TOKENIZER = os.path.join(FIXTURES, "whisper_vq")
QUESTION = os.path.join(TOKENIZER, "audio", "v1_fox.wav")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("dec") / "ckpt"
    decoder_checkpoint.write_untrained(decoder_config.VARIANTS["tiny"], path)  # 64 codes
    return str(path)


def _args(lm, decoder, out, *more):
    return [
        "glmvoice-chat", "--checkpoint", lm, "--speech_tokenizer", TOKENIZER,
        "--speech_decoder", decoder, "--output", str(out), "--max_new_tokens", "30",
        "--max_context", "512", "--dtype", "float32", *more,
    ]  # fmt: skip


def test_two_turns_audio_then_text(tiny_lm, decoder, tmp_path):
    first = chat_cli.main(_args(tiny_lm, decoder, tmp_path, "--input", QUESTION))
    second = chat_cli.main(_args(tiny_lm, decoder, tmp_path, "--text", "and then?"))
    assert (first["number"], second["number"]) == (1, 2)
    assert first["user"] == {"audio": os.path.abspath(QUESTION)} and first["user_codes"]
    assert second["user"] == {"text": "and then?"} and not second["user_codes"]
    lines = [json.loads(x) for x in (tmp_path / "session.jsonl").read_text().splitlines()]
    assert [x["number"] for x in lines] == [1, 2]
    for n, rec in ((1, first), (2, second)):
        stem = tmp_path / f"turn-{n:03d}"
        assert json.loads((stem.with_suffix(".json")).read_text()) == rec
        assert (stem.with_suffix(".txt")).read_text() == rec["reply_text"] + "\n"
        audio, rate = sf.read(str(stem.with_suffix(".wav")))
        assert rate == 22050 and audio.size > 0 and np.isfinite(audio).all()
        t = rec["timings"]
        for key in ("first_text_token_secs", "first_audio_secs", "tokens_per_sec", "load_secs"):
            assert t[key] is not None and t[key] > 0, key
        assert len(t["load_average"]) == 3 and t["template"] == "base"


def _run(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("GLMVOICE_DEBUG", None)
    code = (
        "import sys; from glmvoice_jax.cli import chat; sys.argv[0] = 'glmvoice-chat'; chat.run()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_bad_input_is_one_line(tiny_lm, decoder, tmp_path):
    quiet = str(tmp_path / "quiet.wav")
    sf.write(quiet, np.zeros(8000, np.float32), 16000)
    small = tmp_path / "dec32"
    cfg = decoder_config.VARIANTS["tiny"]
    decoder_checkpoint.write_untrained(
        dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, vocab_size=32)), small
    )
    cases = [
        (["--input", quiet], f"audio file '{quiet}' is silent"),
        (["--input", QUESTION, "--text", "hi"], "exactly one of --input"),
    ]
    for more, want in cases:
        rc, out = _run(*_args(tiny_lm, decoder, tmp_path / "o", *more)[1:])
        assert rc == 1 and "Traceback" not in out and want in out, out
        assert len(out.strip().splitlines()) <= 2, out
    rc, out = _run(*_args(tiny_lm, str(small), tmp_path / "o", "--input", QUESTION)[1:])
    assert rc == 1 and f"decoder {small} knows 32 codes" in out and TOKENIZER in out, out
