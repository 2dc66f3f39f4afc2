"""§9 mel features against librosa's STFT, and the Griffin-Lim inverter on a known tone."""

import dataclasses

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import soundfile

from glmvoice_jax.convert.decoder import decoder_pt
from glmvoice_jax.models.speech_decoder import VARIANTS, export, mel


def _chirp(seconds=0.5):
    """A gliding, amplitude-modulated tone (speech-like: moving pitch, loudness changes)."""
    t = np.arange(int(seconds * mel.SAMPLE_RATE)) / mel.SAMPLE_RATE
    wav = 0.3 * np.sin(2 * np.pi * (150 * t + 200 * t**2)) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return wav.astype(np.float32)


def test_log_mel_matches_librosa_stft_recipe():
    wav = np.random.default_rng(0).normal(scale=0.1, size=5000).astype(np.float32)
    got = mel.log_mel(wav)
    assert got.shape == (5000 // 256, 80) and got.dtype == np.float32
    # §9 by librosa: reflect pad 384, uncentred STFT with a periodic Hann window.
    x = np.pad(wav, (384, 384), mode="reflect")
    spec = librosa.stft(x, n_fft=1024, hop_length=256, win_length=1024, center=False)
    mag = np.sqrt(np.abs(spec) ** 2 + 1e-9)[:, : got.shape[0]]  # (F, T)
    fb = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    want = np.log(np.maximum(fb @ mag, 1e-5)).T
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert got.min() >= np.log(1e-5) - 1e-6


def test_log_mel_bad_input_and_short_audio():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mel.log_mel(np.zeros((2, 300), np.float32))
    assert mel.log_mel(np.zeros(100, np.float32)).shape == (0, 80)
    assert mel.log_mel(np.zeros(300, np.float32)).shape == (1, 80)


def test_griffin_lim_inverts_a_chirp():
    m = mel.log_mel(_chirp())
    out = mel.griffin_lim(m, n_iter=32)
    assert out.shape == (256 * m.shape[0],) and np.abs(out).max() <= 0.99
    # Spectral convergence of the re-analysed mel (linear magnitudes); 0.13 measured.
    again = mel.log_mel(out)
    assert np.linalg.norm(np.exp(again) - np.exp(m)) / np.linalg.norm(np.exp(m)) < 0.2
    np.testing.assert_array_equal(out, mel.griffin_lim(m, n_iter=32))  # seeded


def test_griffin_lim_output_is_aligned_with_its_input():
    # A noise burst: the energy envelope of the inverted audio lines up at lag 0, not at the
    # half-frame (128 samples) that librosa's centred frames would add.
    wav = np.zeros(11025, np.float32)
    wav[5000:8000] = np.random.default_rng(0).normal(scale=0.2, size=3000)
    out = mel.griffin_lim(mel.log_mel(wav), n_iter=32)

    def envelope(x):
        return np.convolve(x[: out.size] ** 2, np.ones(64) / 64, "same")[600:-600]

    ref = envelope(wav)
    corr = {s: np.corrcoef(ref, envelope(np.roll(out, s)))[0, 1] for s in (-128, -64, 0, 64, 128)}
    assert max(corr, key=corr.get) == 0, corr


def test_load_audio_resamples_and_names_bad_files(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, np.zeros(16000, np.float32) + 0.1, 16000)
    got = mel.load_audio(path)
    assert abs(got.size - 22050) <= 1
    with pytest.raises(ValueError, match="does not exist"):
        mel.load_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot decode"):
        mel.load_audio(tmp_path / "bad.wav")


def test_griffin_lim_vocoder_runs_inside_jit_like_hift():
    # DecoderConfig.vocoder "griffin_lim": HiFT's call signature, a host callback under jit.
    m = np.stack([mel.log_mel(_chirp()), mel.log_mel(_chirp() * 0.5)])  # (2, T, M)
    vocoder = mel.GriffinLimVocoder()
    wav, source = jax.jit(lambda x, c: vocoder(x, c, phases=None))(jnp.asarray(m), None)
    assert wav.shape == source.shape == (2, 256 * m.shape[1]) and not np.any(source)
    for row in range(2):
        np.testing.assert_allclose(np.asarray(wav[row]), mel.griffin_lim(m[row]), atol=1e-6)


def test_a_griffin_lim_decoder_refuses_jax_export():
    cfg = dataclasses.replace(VARIANTS["tiny"], vocoder="griffin_lim")
    rng = np.random.default_rng(0)
    params = {
        k: (0.05 * rng.standard_normal(s)).astype(np.float32)
        for k, s in decoder_pt.param_shapes(cfg).items()
    }
    assert not any(k.startswith("hift/") for k in params)  # no vocoder parameters
    model = decoder_pt.build_decoder(cfg, params)
    with pytest.raises(ValueError, match="vocoder is 'griffin_lim'"):
        export.export_decoder(model)
