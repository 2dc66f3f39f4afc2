"""Reconstruction measures on known signals: identical is perfect, noise is worse, bad input."""

import numpy as np
import pytest

from glmvoice_jax.evals import reconstruction

SR = 22050  # the decoder's rate; scored after resampling to 16 kHz


def _speech_like(seconds=2.0, sr=SR):
    """Voiced syllables: 29 harmonics of a gliding 90-150 Hz pitch, 2.5 syllables per second."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 30))
    x = x * np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _noisy(x, snr_db, seed=0):
    noise = np.random.default_rng(seed).normal(size=x.size).astype(np.float32)
    return x + noise * np.std(x) / 10 ** (snr_db / 20)


@pytest.fixture(scope="module")
def clean():
    return _speech_like()


def test_identical_signals_score_perfectly(clean):
    s = reconstruction.score_pair(clean, clean, SR)
    assert s["pesq"] > 4.6  # the scale's top is 4.64
    assert s["stoi"] > 0.999
    assert s["mcd"] == pytest.approx(0.0, abs=1e-6)


def test_noise_scores_worse_and_more_noise_worse_still(clean):
    light = reconstruction.score_pair(clean, _noisy(clean, 20), SR)
    heavy = reconstruction.score_pair(clean, _noisy(clean, 0), SR)
    assert 4.6 > light["pesq"] > heavy["pesq"]
    assert 0.999 > light["stoi"] > heavy["stoi"]
    assert 0.0 < light["mcd"] < heavy["mcd"]


def test_lengths_are_cut_to_the_shorter_signal(clean):
    # A decoder's output is a whole number of 256-sample frames: a few samples short is fine.
    s = reconstruction.score_pair(clean, clean[: clean.size - 200], SR)
    assert s["stoi"] > 0.999 and s["mcd"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("rate", [8000, 12000, 16000.0, True])
def test_wrong_sample_rate_is_refused(clean, rate):
    with pytest.raises(ValueError, match="sample_rate"):
        reconstruction.score_pair(clean, clean, rate)


def test_bad_signals_are_refused_by_name(clean):
    with pytest.raises(ValueError, match="degraded audio is silent"):
        reconstruction.pesq_wb(clean, np.zeros_like(clean), SR)
    with pytest.raises(ValueError, match="reference audio is 0.100 s long"):
        reconstruction.stoi(clean[: SR // 10], clean, SR)
    with pytest.raises(ValueError, match="NaN or Inf"):
        reconstruction.mel_cepstral_distortion(clean, np.full_like(clean, np.nan), SR)
    with pytest.raises(ValueError, match="1-D"):
        reconstruction.stoi(np.stack([clean, clean]), clean, SR)


def test_score_corpus_counts_unscorable_pairs(clean):
    out = reconstruction.score_corpus([clean, clean], [clean, np.zeros_like(clean)], SR)
    assert out["scored"] == 1 and out["errors"][0]["index"] == 1
    assert out["stoi"] > 0.999
    with pytest.raises(ValueError, match="2 reference signals but 1"):
        reconstruction.score_corpus([clean, clean], [clean], SR)


def test_recon_error_rates_through_asr_metrics():
    texts = ["the cat sat", "a dog"]
    out = reconstruction.recon_error_rates(texts, ["the cat sat", "a dog"], ["the bat sat", "a"])
    assert out["original_cer"] == 0.0 and out["original_wer"] == 0.0
    assert out["recon_wer"] == pytest.approx(2 / 5)  # one substitution, one deletion
    assert out["recon_cer"] == pytest.approx(5 / 16)  # "c"->"b"; " dog" deleted
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        reconstruction.recon_error_rates(texts, texts, ["x"])
