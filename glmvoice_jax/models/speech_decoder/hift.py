"""HiFT vocoder: mel → waveform by HiFi-GAN upsampling + iSTFT + a neural source filter.

Ref: decoder.md §8 (F0 predictor, NSF source, decode, resblocks, iSTFT), §13.3-§13.4 (numerics),
§14 (deterministic mode); GLM-4-Voice @ eb00ce9 ``cosyvoice/hifigan/{generator,f0_predictor}.py``.
Parameter names follow it (``conv_pre``, ``ups``, ``source_downs``, ``source_resblocks``,
``resblocks``, ``conv_post``, ``f0_predictor.condnet``, ``m_source.l_linear`` = ``source_linear``).
Weight norm is folded at conversion time.

Axes: B batch, T mel frames, L = 256·T samples, F = L/4 + 1 STFT frames, C channels,
M mel bins, G = nb_harmonics + 1 sines, Q = n_fft/2 + 1 frequency bins, W = n_fft window taps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models.speech_decoder.config import HiFTConfig
from glmvoice_jax.models.speech_decoder.layers import (
    Conv1d,
    ConvTranspose1d,
    is_static,
    linear,
    partitioned,
)


def snake(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """Snake(x) = x + sin²(αx) / (α + 1e-9), α per channel on the last axis, linear scale."""
    return x + (1.0 / (alpha + 1e-9)) * jnp.square(jnp.sin(x * alpha))


class ResBlock(nnx.Module):
    """HiFi-GAN ResBlock with Snake: x += conv2(Snake₂(conv1_d(Snake₁(x)))) per dilation d."""

    def __init__(
        self, channels: int, kernel_size: int, dilations: tuple[int, ...], *, rngs: nnx.Rngs
    ):
        def conv(d: int) -> Conv1d:
            pad = d * (kernel_size - 1) // 2
            return Conv1d(channels, channels, kernel_size, padding=pad, dilation=d, rngs=rngs)

        alpha_init = partitioned(nnx.initializers.ones, ("norm",))
        self.convs1 = nnx.List([conv(d) for d in dilations])
        self.convs2 = nnx.List([conv(1) for _ in dilations])
        self.alphas1 = nnx.List(
            [nnx.Param(alpha_init(rngs.params(), (channels,))) for _ in dilations]
        )
        self.alphas2 = nnx.List(
            [nnx.Param(alpha_init(rngs.params(), (channels,))) for _ in dilations]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, C) → (B, T, C)."""
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.alphas1, self.alphas2):
            x = x + c2(snake(c1(snake(x, a1[...])), a2[...]))
        return x


class F0Predictor(nnx.Module):
    """``ConvRNNF0Predictor`` (no RNN): [Conv_k3 → ELU] × 5 → Linear → |·|, in Hz (§8.1)."""

    def __init__(self, in_channels: int, cond_channels: int, *, rngs: nnx.Rngs):
        chans = [in_channels] + [cond_channels] * 5
        self.condnet = nnx.List(
            [Conv1d(chans[i], chans[i + 1], 3, padding=1, rngs=rngs) for i in range(5)]
        )
        self.classifier = linear(cond_channels, 1, ("embed", None), rngs=rngs)

    def __call__(self, mel: jax.Array) -> jax.Array:
        """(B, T, M) → f0 (B, T)."""
        x = mel
        for conv in self.condnet:
            x = jax.nn.elu(conv(x))
        return jnp.abs(self.classifier(x)[..., 0])


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Knuth's TwoSum: s + err == a + b exactly (IEEE float32, no reassociation)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _dd_add(x: tuple[jax.Array, jax.Array], y: tuple[jax.Array, jax.Array]) -> tuple:
    """Double-float32 addition (hi, lo) + (hi, lo), for ``associative_scan``."""
    s, e = _two_sum(x[0], y[0])
    e = e + (x[1] + y[1])
    hi = s + e
    return hi, e - (hi - s)


def repeated_cumsum(inc: jax.Array, repeat: int) -> jax.Array:
    """Cumulative sum of ``inc`` repeated ``repeat`` times, as a float64 accumulator gives it.

    torch's CPU cumsum accumulates float32 in float64 and rounds each output once; a float32
    scan drifts by up to ~3e-3 after 10 s of 9 x 200 Hz, i.e. 0.02 in sin(θ) (decoder.md
    §13.4). Here the frame sums run in double-float32 (TwoSum) and the in-frame offsets
    k · inc (k ≤ repeat ≤ 4096) are exact products of 12-bit halves of inc, so each output is
    the float32 rounding of the exact sum (up to a rare 1-ulp tie).

    Args:
      inc: (B, T, G) per-frame increments.
      repeat: samples per frame (256).

    Returns:
      (B, T·repeat, G) float32.
    """
    if not 1 <= repeat <= 4096:
        raise ValueError(f"repeat must be in [1, 4096] for exact products, got {repeat}")
    b, t, g = inc.shape
    # Split inc into 12 + 12 significant bits, so k·inc_hi and k·inc_lo are exact for k ≤ 4096.
    inc_hi = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(inc, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32
    )
    inc_lo = inc - inc_hi
    frame = (inc_hi * repeat, inc_lo * repeat)
    if is_static(t):
        frame_hi, frame_lo = jax.lax.associative_scan(_dd_add, frame, axis=1)
    else:  # jax.export: no associative_scan over a symbolic axis, so a sequential scan
        frame_hi, frame_lo = _dd_cumsum_sequential(frame)
    # frame_hi, frame_lo: inclusive sums of whole frames, (B, T, G) each
    zero = jnp.zeros((b, 1, g), jnp.float32)
    start_hi = jnp.concatenate([zero, frame_hi[:, :-1]], axis=1)[:, :, None]  # (B, T, 1, G)
    start_lo = jnp.concatenate([zero, frame_lo[:, :-1]], axis=1)[:, :, None]
    k = jnp.arange(1, repeat + 1, dtype=jnp.float32)[None, None, :, None]  # (1, 1, R, 1)
    s, e = _two_sum(start_hi, inc_hi[:, :, None] * k)  # (B, T, R, G)
    e = e + (start_lo + inc_lo[:, :, None] * k)
    return (s + e).reshape(b, t * repeat, g)  # (B, T·R, G)


def _dd_cumsum_sequential(x: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Inclusive double-float32 prefix sums along axis 1 by ``lax.scan`` (any length).

    Same terms as the associative scan in another order; both stay far below one float32 ulp of
    the exact sum, so the rounded phases agree except at rare ties.
    """

    def step(acc: tuple, item: tuple) -> tuple:
        out = _dd_add(acc, item)
        return out, out

    xs = (jnp.moveaxis(x[0], 1, 0), jnp.moveaxis(x[1], 1, 0))  # (T, B, G) each
    init = (jnp.zeros_like(xs[0][0]), jnp.zeros_like(xs[1][0]))
    _, (hi, lo) = jax.lax.scan(step, init, xs)
    return jnp.moveaxis(hi, 0, 1), jnp.moveaxis(lo, 0, 1)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann(n) = scipy ``get_window('hann', n, fftbins=True)`` = torch.hann_window(n)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """torch.stft(center=True, reflect pad, periodic Hann, onesided) as [real ∥ imag].

    Args:
      x: (B, L) signal.
      n_fft: FFT size = window length.
      hop: hop length; L must be a multiple of it.

    Returns:
      (B, F, 2Q) with F = L / hop + 1 frames and Q = n_fft / 2 + 1 bins.
    """
    half = n_fft // 2
    xp = jnp.pad(x, ((0, 0), (half, half)), mode="reflect")  # (B, L + n_fft)
    n_frames = (xp.shape[1] - n_fft) // hop + 1
    ar = np if is_static(n_frames) else jnp  # symbolic lengths under jax.export
    idx = hop * ar.arange(n_frames)[:, None] + ar.arange(n_fft)[None, :]  # (F, W)
    frames = xp[:, idx] * jnp.asarray(hann_window(n_fft))  # (B, F, W)
    spec = jnp.fft.rfft(frames, axis=-1)  # (B, F, Q)
    return jnp.concatenate([spec.real, spec.imag], axis=-1).astype(jnp.float32)


def istft(magnitude: jax.Array, phase: jax.Array, n_fft: int, hop: int) -> jax.Array:
    """torch.istft(center=True, periodic Hann) of magnitude·e^{i·phase}.

    Args:
      magnitude: (B, F, Q).
      phase: (B, F, Q) in radians.
      n_fft: FFT size = window length; must be a multiple of ``hop``.
      hop: hop length.

    Returns:
      (B, hop · (F - 1)) samples: overlap-added, divided by the window² envelope, trimmed by
      n_fft / 2 at each end.
    """
    b, n_frames, _ = magnitude.shape
    r = n_fft // hop
    window = hann_window(n_fft)
    spec = jax.lax.complex(magnitude * jnp.cos(phase), magnitude * jnp.sin(phase))
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * jnp.asarray(window)  # (B, F, W)
    # Overlap-add: frame f covers hop blocks f .. f + r - 1.
    blocks = frames.reshape(b, n_frames, r, hop)  # (B, F, r, hop)
    out = jnp.zeros((b, n_frames + r - 1, hop), frames.dtype)
    for q in range(r):
        out = out.at[:, q : q + n_frames].add(blocks[:, :, q])
    out = out.reshape(b, -1)  # (B, n_fft + hop (F - 1))
    half = n_fft // 2
    end = out.shape[1] - half
    return out[:, half:end] / _ola_envelope(window, n_frames, hop)[half:end]


def _ola_envelope(window: np.ndarray, n_frames: Any, hop: int) -> np.ndarray | jax.Array:
    """Overlap-added window² of ``n_frames`` frames at ``hop``, (n_fft + hop (F - 1),).

    Block j (of ``hop`` samples) sums w²-block q of every frame f = j - q, q = 0..r - 1, added
    in increasing q from 0 in float32. A static F gives that numpy array. A symbolic F
    (``jax.export``, F ≥ r) gives the same values as [r - 1 head blocks, the full sum repeated
    F - r + 1 times, r - 1 tail blocks], which XLA need not constant-fold element by element.
    """
    r = window.size // hop
    w2 = np.square(window).reshape(r, hop)
    if is_static(n_frames):
        env = np.zeros((n_frames + r - 1, hop), np.float32)
        for q in range(r):
            env[q : q + n_frames] += w2[q]
        return env.reshape(-1)

    def partial_sum(qs: range) -> np.ndarray:
        acc = np.zeros(hop, np.float32)
        for q in qs:
            acc += w2[q]
        return acc

    head = np.stack([partial_sum(range(j + 1)) for j in range(r - 1)]).reshape(r - 1, hop)
    tail = np.stack([partial_sum(range(k + 1, r)) for k in range(r - 1)]).reshape(r - 1, hop)
    body = jnp.broadcast_to(partial_sum(range(r)), (n_frames - r + 1, hop))
    return jnp.concatenate([head, body, tail], axis=0).reshape(-1)


class HiFT(nnx.Module):
    """``HiFTGenerator``; ``__call__`` = forward (f0 → source → decode)."""

    def __init__(self, cfg: HiFTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        base = cfg.base_channels
        n_bins = cfg.istft_n_fft + 2  # [magnitude ∥ phase] of n_fft/2 + 1 bins each
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels, rngs=rngs)
        self.source_linear = linear(cfg.nb_harmonics + 1, 1, (None, None), rngs=rngs)
        self.conv_pre = Conv1d(cfg.in_channels, base, 7, padding=3, rngs=rngs)
        ups, downs, source_resblocks, resblocks = [], [], [], []
        n_up = len(cfg.upsample_rates)
        # Source downsampling rates per stage: cumulative product of the later upsample rates.
        down_rates = np.cumprod([1] + list(cfg.upsample_rates[::-1][:-1]))[::-1]
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = base // 2**i, base // 2 ** (i + 1)
            ups.append(ConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2, rngs=rngs))
            d = int(down_rates[i])
            if d == 1:
                downs.append(Conv1d(n_bins, c_out, 1, rngs=rngs))
            else:
                downs.append(Conv1d(n_bins, c_out, 2 * d, stride=d, padding=d // 2, rngs=rngs))
            source_resblocks.append(
                ResBlock(
                    c_out,
                    cfg.source_resblock_kernel_sizes[i],
                    cfg.source_resblock_dilation_sizes[i],
                    rngs=rngs,
                )
            )
            for kr, dr in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                resblocks.append(ResBlock(c_out, kr, dr, rngs=rngs))
        self.ups = nnx.List(ups)
        self.source_downs = nnx.List(downs)
        self.source_resblocks = nnx.List(source_resblocks)
        self.resblocks = nnx.List(resblocks)
        self.conv_post = Conv1d(base // 2**n_up, n_bins, 7, padding=3, out_axis=None, rngs=rngs)

    def source(
        self, f0: jax.Array, phases: jax.Array | None = None, noise: jax.Array | None = None
    ) -> jax.Array:
        """``SourceModuleHnNSF``: harmonic sines + noise merged by Linear + tanh (§8.2).

        Args:
          f0: (B, T) Hz.
          phases: (B, G) initial phases (φ_0 is forced to 0); None → zeros (deterministic).
          noise: (B, L, G) standard-normal noise; None → no noise (deterministic).

        Returns:
          s (B, L).
        """
        cfg = self.cfg
        g = cfg.nb_harmonics + 1
        f0_up = jnp.repeat(f0, cfg.upsample_factor, axis=1)  # (B, L), exact ×256 repeat
        harmonics = jnp.arange(1, g + 1, dtype=jnp.float32)
        # Per-sample increments f0·(h+1)/sr are constant within a frame: compute them per frame.
        inc = f0[..., None] * harmonics / jnp.float32(cfg.sampling_rate)  # (B, T, G)
        phase = repeated_cumsum(inc, cfg.upsample_factor)  # (B, L, G)
        theta = jnp.float32(2 * np.pi) * jnp.mod(phase, 1.0)
        if phases is not None:
            phases = phases.at[:, 0].set(0.0)
            theta = theta + phases[:, None, :]
        sine = jnp.float32(cfg.nsf_alpha) * jnp.sin(theta)
        uv = (f0_up > cfg.nsf_voiced_threshold).astype(jnp.float32)[..., None]  # (B, L, 1)
        e = sine * uv
        if noise is not None:
            amp = uv * cfg.nsf_sigma + (1.0 - uv) * (cfg.nsf_alpha / 3)
            e = e + amp * noise
        return jnp.tanh(self.source_linear(e))[..., 0]

    def decode(self, mel: jax.Array, s: jax.Array) -> jax.Array:
        """``HiFTGenerator.decode`` (§8.4-§8.7).

        Args:
          mel: (B, T, M).
          s: (B, L) source signal.

        Returns:
          wav (B, L) clamped to ±audio_limit.
        """
        cfg = self.cfg
        s_stft = stft(s, cfg.istft_n_fft, cfg.istft_hop)  # (B, F, 2Q)
        x = self.conv_pre(mel)  # (B, T, C)
        n_up, n_k = len(self.ups), len(cfg.resblock_kernel_sizes)
        for i in range(n_up):
            x = jax.nn.leaky_relu(x, cfg.lrelu_slope)
            x = self.ups[i](x)
            if i == n_up - 1:
                x = jnp.concatenate([x[:, 1:2], x], axis=1)  # ReflectionPad1d((1, 0))
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * n_k](x)
            for j in range(1, n_k):
                xs = xs + self.resblocks[i * n_k + j](x)
            x = xs / n_k
        x = self.conv_post(jax.nn.leaky_relu(x, 0.01))  # default slope here, not lrelu_slope
        q = cfg.istft_n_fft // 2 + 1
        magnitude = jnp.minimum(jnp.exp(x[..., :q]), 100.0)
        phase = jnp.sin(x[..., q:])  # the sine of the raw output is the phase (§13.3)
        wav = istft(magnitude, phase, cfg.istft_n_fft, cfg.istft_hop)
        return jnp.clip(wav, -cfg.audio_limit, cfg.audio_limit)

    def __call__(
        self,
        mel: jax.Array,
        cache_source: jax.Array | None = None,
        phases: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``HiFTGenerator.forward``.

        Args:
          mel: (B, T, M).
          cache_source: (B, K) source samples that overwrite s[:, :K] (streaming, §8.3).
          phases: see ``source``.
          noise: see ``source``.

        Returns:
          (wav (B, 256·T), s (B, 256·T)).
        """
        f0 = self.f0_predictor(mel)  # (B, T)
        s = self.source(f0, phases, noise)
        if cache_source is not None and cache_source.shape[1]:
            s = s.at[:, : cache_source.shape[1]].set(cache_source)
        return self.decode(mel, s), s
