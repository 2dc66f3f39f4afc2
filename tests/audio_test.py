"""Audio loading and Whisper log-mel parity with transformers' WhisperFeatureExtractor."""

import json
import pathlib

import numpy as np
import pytest
import soundfile

from glmvoice_jax import audio

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "whisper_vq"
MEL_TOL = 2e-3  # fixed (fixture README); never loosen


def _records():
    with open(FIXTURE / "audio.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def fixture_audio():
    out = []
    for rec in _records():
        wav = audio.load_audio(FIXTURE / rec["audio"])
        expected = np.load(FIXTURE / "expected_mel" / f"{rec['id']}.npy")
        out.append((rec["id"], wav, expected))
    return out


def test_load_audio_reads_pcm16_as_int_over_32768(fixture_audio):
    _, wav, _ = fixture_audio[0]
    raw, sr = soundfile.read(FIXTURE / "audio" / "v0_hi.wav", dtype="int16")
    assert sr == 16000 and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, raw.astype(np.float32) / 32768.0)


def test_log_mel_numpy_matches_whisper_feature_extractor(fixture_audio):
    for name, wav, expected in fixture_audio:
        mel = audio.log_mel_spectrogram(wav)
        assert mel.shape == expected.shape == (128, wav.shape[0] // 160), name
        assert mel.dtype == np.float32
        assert np.abs(mel - expected).max() <= MEL_TOL, name


def test_log_mel_jax_batched_matches_extractor_per_utterance(fixture_audio):
    wavs = [w for _, w, _ in fixture_audio]
    longest = max(w.shape[0] for w in wavs) + 1000  # extra padding must not leak into rows
    batch = np.zeros((len(wavs), longest), np.float32)
    batch[:, :] = 0.3  # padding content is arbitrary
    for i, w in enumerate(wavs):
        batch[i, : w.shape[0]] = w
    lengths = np.array([w.shape[0] for w in wavs])
    mel = np.asarray(audio.log_mel_jax(batch, lengths))
    assert mel.shape == (len(wavs), longest // 160, 128)
    for i, (name, wav, expected) in enumerate(fixture_audio):
        frames = wav.shape[0] // 160
        assert np.abs(mel[i, :frames].T - expected).max() <= MEL_TOL, name
        assert np.all(mel[i, frames:] == 0.0), name


def test_load_audio_resamples_and_downmixes(tmp_path):
    t = np.arange(22050) / 22050.0
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, -left * 0.5], axis=1).astype(np.float32)
    path = tmp_path / "stereo22k.flac"
    soundfile.write(path, stereo, 22050)
    wav = audio.load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.shape[0] - 16000) <= 1
    # Mean of channels = (0.5 - 0.25) / 2 * sin: check the amplitude away from the edges.
    assert abs(np.abs(wav[2000:14000]).max() - 0.125) < 0.005


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        audio.load_audio(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"definitely not audio" * 10)
    with pytest.raises(ValueError, match="garbage.wav"):
        audio.load_audio(garbage)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0,), np.float32), 16000)
    with pytest.raises(ValueError, match="empty.wav.*no samples"):
        audio.load_audio(empty)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav.*NaN"):
        audio.load_audio(nan)


def test_log_mel_rejects_bad_waveforms():
    with pytest.raises(ValueError, match="mono"):
        audio.log_mel_spectrogram(np.zeros((2, 1000), np.float32))
    with pytest.raises(ValueError, match="more than 200"):
        audio.log_mel_spectrogram(np.zeros((150,), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        audio.log_mel_spectrogram(np.full((1000,), np.nan, np.float32))
