"""Audio loading and the Whisper log-mel front end of the speech tokenizer.

``log_mel_spectrogram`` (numpy, one utterance) equals transformers' ``WhisperFeatureExtractor`` on
the same unpadded audio (glm4voice.md §2.8, jax_stack_notes.md §11.2): periodic Hann window of 400,
hop 160, centred STFT with *reflect* padding, power spectrum, Slaney mel filters 0-8 kHz,
log10(max(., 1e-10)), the last STFT frame dropped, x <- max(x, max(x) - 8) over the utterance,
then (x + 4) / 4. ``log_mel_jax`` is the same math, batched on device.

Frames: an utterance of n samples has n // 160 mel frames (the STFT gives n // 160 + 1, the last is
dropped).

Axes: B batch, S samples, L mel frames, M mel bins, W window samples (400), Q frequency bins (201).
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import soundfile
import soxr

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # log10 units below the utterance maximum that survive the clamp


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Reads an audio file as 16 kHz mono float32 in [-1, 1].

    wav/flac/ogg (and mp3 where libsndfile supports it) go through soundfile; anything soundfile
    cannot read goes through librosa. Multi-channel audio is averaged to mono; other sample rates
    are resampled with soxr (high quality, as ``librosa.load``).

    Args:
      path: the audio file.

    Returns:
      [S] float32 at 16 kHz.

    Raises:
      ValueError: naming the file, when it does not exist, cannot be decoded, holds no samples, or
        holds NaN/Inf samples.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"audio file {path!r} does not exist (or is not a regular file)")
    try:
        data, sr = soundfile.read(path, dtype="float32", always_2d=True)  # (S, channels)
        data = data.mean(axis=1)
    except Exception as sf_error:  # noqa: BLE001 - any decoder failure falls back to librosa
        try:
            import librosa  # lazy: imports numba (seconds); few paths need it

            with warnings.catch_warnings():  # librosa warns before trying audioread
                warnings.simplefilter("ignore")
                data, sr = librosa.load(path, sr=None, mono=True)
        except Exception as lr_error:  # noqa: BLE001
            raise ValueError(
                f"cannot decode audio file {path!r}: soundfile: {sf_error!r}; librosa: "
                f"{lr_error!r}. Convert it to wav or flac (e.g. with sox or ffmpeg)."
            ) from lr_error
    data = np.asarray(data, dtype=np.float32)
    if data.size == 0:
        raise ValueError(f"audio file {path!r} holds no samples")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"audio file {path!r} holds NaN or Inf samples")
    if sr != SAMPLE_RATE:
        data = resample(data, int(sr), path=path)
    return data


def resample(wav: np.ndarray, sample_rate: int, *, path: str = "<array>") -> np.ndarray:
    """Resamples a mono waveform to 16 kHz with soxr (librosa's default 'soxr_hq')."""
    if sample_rate <= 0:
        raise ValueError(f"audio {path!r} has an invalid sample rate {sample_rate}")
    if sample_rate == SAMPLE_RATE:
        return np.asarray(wav, dtype=np.float32)

    out = soxr.resample(np.asarray(wav, dtype=np.float32), sample_rate, SAMPLE_RATE, quality="HQ")
    out = np.asarray(out, dtype=np.float32)
    if out.size == 0:
        raise ValueError(f"audio {path!r} is too short to resample from {sample_rate} Hz")
    return out


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int = 128) -> np.ndarray:
    """[M, Q] float64 Slaney-scale, Slaney-normalised mel filterbank, 0-8 kHz (librosa)."""
    import librosa  # lazy: imports numba (seconds); few paths need it

    return librosa.filters.mel(
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        n_mels=n_mels,
        fmin=0.0,
        fmax=SAMPLE_RATE / 2,
        htk=False,
        norm="slaney",
        dtype=np.float64,
    )


def _hann_periodic() -> np.ndarray:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)  # [W], periodic (torch.hann_window)


def _check_waveform(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform [samples], got shape {wav.shape}")
    if wav.shape[0] <= N_FFT // 2:
        raise ValueError(
            f"waveform has {wav.shape[0]} samples; the centred STFT needs more than "
            f"{N_FFT // 2} (reflect padding), i.e. at least 12.6 ms at 16 kHz"
        )
    if not np.all(np.isfinite(wav)):
        raise ValueError("waveform holds NaN or Inf samples")
    return wav


def log_mel_spectrogram(wav_16k: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """Whisper log-mel features of one 16 kHz utterance, as ``WhisperFeatureExtractor``.

    Args:
      wav_16k: [S] mono waveform at 16 kHz (any float dtype), unpadded.
      n_mels: number of mel bins (128 for whisper-large-v3 and the GLM-4-Voice tokenizer).

    Returns:
      [n_mels, S // 160] float32.

    Raises:
      ValueError: for a non-1-D, too short (<= 200 samples) or non-finite waveform.
    """
    wav = _check_waveform(wav_16k).astype(np.float64)
    pad = N_FFT // 2
    padded = np.pad(wav, (pad, pad), mode="reflect")
    num_frames = 1 + (padded.shape[0] - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:num_frames]
    spec = np.fft.rfft(frames * _hann_periodic(), axis=-1)  # (L + 1, Q)
    power = np.abs(spec[:-1]) ** 2  # drop the last frame: (L, Q)
    mel = mel_filters(n_mels) @ power.T  # (M, L)
    log_spec = np.log10(np.maximum(mel, LOG_FLOOR))
    log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def log_mel_jax(wav: jax.Array, lengths: jax.Array, n_mels: int = 128) -> jax.Array:
    """Batched Whisper log-mel features on device, one utterance per row.

    Row b equals ``log_mel_spectrogram(wav[b, :lengths[b]])`` (transposed) on its first
    ``lengths[b] // 160`` frames: each row is reflect-padded at its own length (not at the batch
    length), and the clamp uses the maximum over that row's valid frames only. Frames at or after
    ``lengths[b] // 160`` are 0.

    Args:
      wav: [B, S] float waveforms at 16 kHz, right-padded with anything.
      lengths: [B] int number of real samples per row (each > 200 and <= S).
      n_mels: number of mel bins.

    Returns:
      [B, S // 160, n_mels] float32.
    """
    wav = jnp.asarray(wav, jnp.float32)
    lengths = jnp.asarray(lengths, jnp.int32)
    _, s = wav.shape
    num_frames = s // HOP_LENGTH
    # Sample index of tap w of frame l, reflected at both ends of each row (torch reflect pad).
    idx = (jnp.arange(num_frames) * HOP_LENGTH)[:, None] + jnp.arange(N_FFT)[None, :] - N_FFT // 2
    n = lengths[:, None, None]  # (B, 1, 1)
    idx = jnp.abs(idx)[None]  # left reflection: -i -> i; (1, L, W)
    idx = jnp.where(idx >= n, 2 * (n - 1) - idx, idx)  # right reflection: n-1+i -> n-1-i
    idx = jnp.clip(idx, 0, s - 1)  # (B, L, W)
    frames = jnp.take_along_axis(wav[:, None, :], idx, axis=2)  # (B, L, W)
    window = jnp.asarray(_hann_periodic(), jnp.float32)
    spec = jnp.fft.rfft(frames * window, axis=-1)  # (B, L, Q)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    filters = jnp.asarray(mel_filters(n_mels).T, jnp.float32)  # (Q, M)
    mel = jnp.matmul(power, filters, precision=jax.lax.Precision.HIGHEST)  # (B, L, M)
    log_spec = jnp.log10(jnp.maximum(mel, LOG_FLOOR))
    valid = jnp.arange(num_frames)[None, :] < (lengths // HOP_LENGTH)[:, None]  # (B, L)
    row_max = jnp.max(jnp.where(valid[:, :, None], log_spec, -jnp.inf), axis=(1, 2))  # (B,)
    log_spec = jnp.maximum(log_spec, (row_max - DYNAMIC_RANGE)[:, None, None])
    return jnp.where(valid[:, :, None], (log_spec + 4.0) / 4.0, 0.0)
