"""Whole-utterance and streaming parity of the tiny decoder against the reference fixtures.

Fixture: tests/fixtures/decoder (README there): the GLM-4-Voice reference run in eval mode with
zero flow noise, zero NSF noise and zero harmonic phases (decoder.md §14). Tolerance 1e-3 max
abs on mel and waveform (fixed; float64-vs-float32 of the reference itself is ≤ 4e-5).
"""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import pytest

from glmvoice_jax.convert.decoder.decoder_pt import load_decoder
from glmvoice_jax.models.speech_decoder import tokens_to_audio
from glmvoice_jax.models.speech_decoder.speech_decoder import FAST_MODE
from glmvoice_jax.models.speech_decoder.stream import stream_decode

FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "decoder"
UTTERANCES = [json.loads(line) for line in (FIXTURES / "tokens.jsonl").read_text().splitlines()]
TOL = 1e-3


@pytest.fixture(scope="module")
def model():
    return load_decoder(FIXTURES)


@pytest.mark.parametrize("utt", UTTERANCES, ids=[u["id"] for u in UTTERANCES])
def test_whole_utterance_parity(model, utt):
    mel, wav = tokens_to_audio(model, utt["tokens"])
    want_mel = np.load(FIXTURES / "expected" / f"{utt['id']}.mel.npy")
    want_wav = np.load(FIXTURES / "expected" / f"{utt['id']}.wav.npy")
    assert mel.shape == want_mel.shape and mel.dtype == np.float32
    assert wav.shape == want_wav.shape == (256 * mel.shape[1],)
    np.testing.assert_allclose(mel, want_mel, rtol=0, atol=TOL)
    np.testing.assert_allclose(wav, want_wav, rtol=0, atol=TOL)


def test_streaming_schedule_parity(model):
    utt = UTTERANCES[0]
    wav, chunks = stream_decode(model, utt["tokens"])
    meta = json.loads((FIXTURES / "expected" / f"{utt['id']}.stream.json").read_text())
    assert [dataclasses.asdict(c) for c in chunks] == meta["chunks"]
    want = np.load(FIXTURES / "expected" / f"{utt['id']}.stream.wav.npy")
    assert wav.shape == want.shape
    np.testing.assert_allclose(wav, want, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "tokens, message",
    [
        ([1, 2, 64, 3], r"token id 64 at position 2 is outside the codebook of size 64"),
        ([-1, 2], r"token id -1 at position 0 is outside the codebook of size 64"),
        ([], r"tokens is empty"),
        ([[1, 2]], r"1-D list of ids"),
        ([1.5, 2.0], r"must be integers"),
    ],
)
def test_bad_tokens_are_explained(model, tokens, message):
    with pytest.raises(ValueError, match=message):
        tokens_to_audio(model, tokens)
    with pytest.raises(ValueError, match=message):
        stream_decode(model, tokens)


def test_random_mode_runs_and_respects_the_clamp(model):
    tokens = UTTERANCES[2]["tokens"]
    mel, wav = tokens_to_audio(model, tokens, key=jax.random.key(3))
    det_mel, _ = tokens_to_audio(model, tokens)
    assert mel.shape == det_mel.shape and wav.shape == (256 * mel.shape[1],)
    assert np.isfinite(mel).all() and np.isfinite(wav).all()
    assert np.abs(wav).max() <= 0.99
    assert np.abs(mel - det_mel).max() > 1e-2  # the noise is really used


def test_bf16_fast_mode_is_opt_in_and_close_to_exact(model):
    """matmul_dtype="bfloat16" (docs/decoder_speed.md) changes the mel only slightly; the default
    stays the exact mode that the parity tests above check."""
    tokens = UTTERANCES[2]["tokens"]
    mel, wav = tokens_to_audio(model, tokens)
    fast_mel, fast_wav = tokens_to_audio(model, tokens, matmul_dtype="bfloat16")
    assert fast_mel.shape == mel.shape and fast_wav.shape == wav.shape
    diff = np.abs(fast_mel - mel).max()
    print(f"bf16 fast mode: mel max abs diff {diff:.2e}, wav {np.abs(fast_wav - wav).max():.2e}")
    assert 0 < diff < 5e-2
    stream_wav, _ = stream_decode(model, tokens, block_sizes=(10,), matmul_dtype="bfloat16")
    exact_stream_wav, _ = stream_decode(model, tokens, block_sizes=(10,))
    assert stream_wav.shape == exact_stream_wav.shape
    assert np.abs(stream_wav - exact_stream_wav).max() < 5e-2


def test_fewer_euler_steps_are_opt_in_and_bounded(model):
    """n_steps (the FAST_MODE preset: bf16 + 5 Euler steps) is opt-in: the default is the
    config's 10 steps, and the fast preset's distance from exact stays within the measured bound.

    Measured (2026-12-04, this utterance, tiny random-weight fixture): FAST_MODE mel max abs
    1.28, mel mean abs 0.201, wav rms diff 0.0118 (wav rms 0.0436). Random weights give no smooth
    velocity field, so the step error here is far larger than the bf16 error; the bound guards
    against a broken schedule (e.g. 1 step: mel mean abs 0.4+) rather than grading quality.
    """
    tokens = UTTERANCES[2]["tokens"]
    mel, wav = tokens_to_audio(model, tokens)
    ten_mel, _ = tokens_to_audio(model, tokens, n_steps=10)
    np.testing.assert_array_equal(mel, ten_mel)  # the default really is 10 steps
    fast_mel, fast_wav = tokens_to_audio(model, tokens, **FAST_MODE)
    assert fast_mel.shape == mel.shape and fast_wav.shape == wav.shape
    mean = np.abs(fast_mel - mel).mean()
    rms = np.sqrt(np.mean((fast_wav - wav) ** 2))
    print(f"FAST_MODE: mel mean abs diff {mean:.3g}, wav rms diff {rms:.3g}")
    assert 0 < mean < 0.3
    assert rms < 0.02
    with pytest.raises(ValueError, match="n_steps must be at least 1"):
        tokens_to_audio(model, tokens, n_steps=0)


def test_bounded_history_streaming_is_opt_in_and_close(model):
    """history_tokens=H bounds each chunk's flow to H + block tokens; a window that holds the
    whole history is exact streaming, and a shorter one stays near it.

    Measured (2026-12-04, 40 tokens, blocks of 10, tiny random-weight fixture): H = 20 gives wav
    max abs diff 0.118, rms 0.0119 against exact streaming (wav rms about 0.045).
    """
    tokens = UTTERANCES[0]["tokens"]
    exact, exact_chunks = stream_decode(model, tokens, block_sizes=(10,))
    same, _ = stream_decode(model, tokens, block_sizes=(10,), history_tokens=30)
    np.testing.assert_array_equal(same, exact)  # 30 tokens hold every chunk's whole history
    wav, chunks = stream_decode(model, tokens, block_sizes=(10,), history_tokens=20)
    assert [c.prompt_tokens for c in chunks] == [0, 10, 20, 20]
    assert [c.samples for c in chunks] == [c.samples for c in exact_chunks]
    diff = np.abs(wav - exact)
    print(f"history 20: wav max abs diff {diff.max():.3g}, rms {np.sqrt(np.mean(diff**2)):.3g}")
    assert 0 < diff.max() < 0.25
    assert np.sqrt(np.mean(diff**2)) < 0.025
