"""The speech decoder's mel features (its training targets) and a Griffin-Lim mel inverter.

Ref: decoder.md §9 (the CosyVoice v1 / Matcha ``mel_spectrogram``: 22050 Hz, n_fft 1024, hop 256,
win 1024, 80 Slaney mel bins over 0-8 kHz, ``center=False`` after a reflect pad of (n_fft - hop)/2
on both sides, magnitude √(re² + im² + 1e-9), natural log floored at 1e-5). An utterance of S
samples gives S // 256 frames, one per 256 samples, which is the HiFT vocoder's hop.

Griffin-Lim (``griffin_lim``) is the tiny-scale vocoder: with no release HiFT to reuse, it turns a
mel into audible, measurable audio with no training (librosa's NNLS inversion of the mel filter
bank, then Griffin & Lim 1984 phase reconstruction). Frame k of §9 is centred on sample
256·k + 128 (the reflect pad is 384, the window 1024), librosa's centred frames on 256·k: the
output is shifted by 128 samples to line up with the input.

Axes: S samples, T frames, M mel bins, F frequency bins (n_fft / 2 + 1 = 513).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import soundfile
import soxr
from flax import nnx

SAMPLE_RATE = 22050
N_FFT = 1024
HOP_LENGTH = 256
NUM_MELS = 80
FMAX = 8000.0
LOG_FLOOR = 1e-5


@functools.cache
def mel_filters() -> np.ndarray:
    """(M, F) Slaney-scale, Slaney-normalised mel filter bank over 0-8 kHz (librosa's defaults)."""
    import librosa  # lazy: imports numba (seconds); only the decoder's training and evals need it

    return librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=0.0, fmax=FMAX
    ).astype(np.float32)


@functools.cache
def _hann() -> np.ndarray:
    """Periodic Hann window of N_FFT (torch.hann_window's default)."""
    n = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)).astype(np.float32)


def log_mel(wav: np.ndarray) -> np.ndarray:
    """§9 log-mel of one 22050 Hz waveform: (T, M) float32 with T = S // 256.

    Args:
      wav: (S,) float32 samples at 22050 Hz, S >= 1.

    Returns:
      (T, M) natural-log mel magnitudes, >= log(1e-5); frames first (channel-last).

    Raises:
      ValueError: for an empty or non-1-D waveform.
    """
    wav = np.asarray(wav, np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"log_mel needs a non-empty 1-D waveform, got shape {wav.shape}")
    pad = (N_FFT - HOP_LENGTH) // 2
    mode = "reflect" if wav.size > pad else "constant"  # reflect needs more samples than pad
    x = np.pad(wav, (pad, pad), mode=mode)
    frames = wav.size // HOP_LENGTH
    if frames == 0:
        return np.zeros((0, NUM_MELS), np.float32)
    idx = np.arange(N_FFT)[None, :] + HOP_LENGTH * np.arange(frames)[:, None]  # (T, N_FFT)
    spec = np.fft.rfft(x[idx] * _hann()[None, :], axis=-1)  # (T, F)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9).astype(np.float32)
    return np.log(np.maximum(mag @ mel_filters().T, LOG_FLOOR)).astype(np.float32)  # (T, M)


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Reads an audio file as 22050 Hz mono float32 (soxr high-quality resampling).

    Raises:
      ValueError: naming the file when it is missing, undecodable, empty or holds NaN/Inf.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"audio file {path!r} does not exist (or is not a regular file)")
    try:
        data, sr = soundfile.read(path, dtype="float32", always_2d=True)  # (S, channels)
    except Exception as e:  # noqa: BLE001 - any decoder failure is the file's fault
        raise ValueError(f"cannot decode audio file {path!r}: {e}") from e
    data = np.asarray(data.mean(axis=1), np.float32)
    if data.size == 0:
        raise ValueError(f"audio file {path!r} holds no samples")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"audio file {path!r} holds NaN or Inf samples")
    if sr != SAMPLE_RATE:
        data = soxr.resample(data, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return data


def griffin_lim(mel: np.ndarray, *, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Inverts a §9 log-mel to a 22050 Hz waveform of 256·T samples (the tiny-scale vocoder).

    Args:
      mel: (T, M) log-mel, frames first.
      n_iter: Griffin-Lim iterations.
      seed: seed of the initial random phases (deterministic output).

    Returns:
      (256·T,) float32, clipped to ±0.99 like HiFT's output.
    """
    import librosa  # lazy: imports numba (seconds); only the decoder's training and evals need it

    mel = np.asarray(mel, np.float32)
    t = mel.shape[0]
    if t == 0:
        return np.zeros((0,), np.float32)
    mag = librosa.util.nnls(mel_filters(), np.exp(mel).T)  # (F, T) linear magnitudes
    wav = librosa.griffinlim(
        mag,
        n_iter=n_iter,
        hop_length=HOP_LENGTH,
        win_length=N_FFT,
        n_fft=N_FFT,
        window="hann",
        center=True,
        random_state=seed,
    )  # 256·(T - 1) samples
    # librosa's frame k is centred on sample 256·k, §9's on 256·k + 128.
    wav = np.pad(wav.astype(np.float32), (HOP_LENGTH // 2, HOP_LENGTH * t))[: HOP_LENGTH * t]
    return np.clip(wav, -0.99, 0.99).astype(np.float32)


class GriffinLimVocoder(nnx.Module):
    """``griffin_lim`` in the vocoder slot of ``SpeechDecoder`` (``DecoderConfig.vocoder``).

    Called like ``HiFT``: (mel (B, T, M), cache_source, phases=, noise=) → (wav (B, 256·T),
    source (B, 256·T)), inside jit through ``jax.pure_callback`` (the inversion runs on the host
    in numpy/librosa). It has no parameters and draws no noise: ``cache_source``, ``phases`` and
    ``noise`` are accepted and ignored, and ``source`` is zeros. Streamed chunks are inverted
    one by one, each from its own seeded phases. Not exportable with ``jax.export`` (a host
    callback).
    """

    def __init__(self, n_iter: int = 32, seed: int = 0):
        self.n_iter = n_iter
        self.seed = seed

    def __call__(
        self,
        mel: jax.Array,
        cache_source: jax.Array | None = None,
        *,
        phases: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """(B, T, M) log-mel → (wav (B, 256·T), zeros (B, 256·T)); the other inputs are ignored."""
        del cache_source, phases, noise
        b, t, _ = mel.shape
        out = jax.ShapeDtypeStruct((b, HOP_LENGTH * t), jnp.float32)

        def host(m: np.ndarray) -> np.ndarray:
            rows = [griffin_lim(r, n_iter=self.n_iter, seed=self.seed) for r in np.asarray(m)]
            return np.stack(rows).astype(np.float32).reshape(b, HOP_LENGTH * t)

        wav = jax.pure_callback(host, out, mel.astype(jnp.float32))
        return wav, jnp.zeros_like(wav)
