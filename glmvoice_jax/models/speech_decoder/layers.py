"""Shared building blocks of the speech decoder: torch-layout convs, norms, activations, lengths.

Ref: decoder.md §11.3 (PyTorch → JAX convolutions), §13.2 (length and interpolation rules),
§13.3 (activations and norms, eps 1e-5 everywhere). Everything is channel-last.

Axes: B batch, T time (frames or samples), N tokens, C channels, K kernel taps.

Parameter layout (what ``convert/decoder_pt.py`` writes):
  Conv1d.kernel (K, C_in, C_out) = torch W(C_out, C_in, K) transposed (2, 1, 0).
  ConvTranspose1d.kernel (K, C_in, C_out) = torch W(C_in, C_out, K) transposed (2, 0, 1).
  nnx.Linear.kernel (C_in, C_out) = torch W(C_out, C_in) transposed.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# torch's default Conv/Linear weight init (kaiming_uniform with a = sqrt(5)) = U(±1/sqrt(fan_in)).
_torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

Axis = str | None


def partitioned(init: nnx.Initializer, axes: tuple[Axis, ...]) -> nnx.Initializer:
    """``init`` with logical axes, not eagerly sharded.

    The models also run outside a mesh; trainers place parameters with
    ``sharding.init_params`` (as ``models/glm.py`` does).
    """
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def _conv_init(in_axis: int, out_axis: int) -> nnx.Initializer:
    return nnx.initializers.variance_scaling(
        1.0 / 3.0, "fan_in", "uniform", in_axis=in_axis, out_axis=out_axis
    )


class Conv1d(nnx.Module):
    """torch ``Conv1d`` on channel-last input with explicit symmetric padding (never 'SAME')."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        out_axis: Axis = "conv_out",
        rngs: nnx.Rngs,
    ):
        self.stride, self.padding, self.dilation = stride, padding, dilation
        # fan_in = C_in * K for a (K, C_in, C_out) kernel.
        init = _conv_init(in_axis=(0, 1), out_axis=2)
        self.kernel = nnx.Param(
            partitioned(init, (None, "conv_in", out_axis))(
                rngs.params(), (kernel_size, in_channels, out_channels)
            )
        )
        self.bias = nnx.Param(
            partitioned(nnx.initializers.zeros, (out_axis,))(rngs.params(), (out_channels,))
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, C_in) → (B, T_out, C_out)."""
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel[...],
            window_strides=(self.stride,),
            padding=[(self.padding, self.padding)],
            rhs_dilation=(self.dilation,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...]


class ConvTranspose1d(nnx.Module):
    """torch ``ConvTranspose1d(k, s, p)``: output length (L - 1)s - 2p + k (decoder.md §11.3a)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int,
        padding: int,
        out_axis: Axis = "conv_out",
        rngs: nnx.Rngs,
    ):
        self.stride, self.padding = stride, padding
        init = _conv_init(in_axis=(0, 2), out_axis=1)
        self.kernel = nnx.Param(
            partitioned(init, (None, "conv_in", out_axis))(
                rngs.params(), (kernel_size, in_channels, out_channels)
            )
        )
        self.bias = nnx.Param(
            partitioned(nnx.initializers.zeros, (out_axis,))(rngs.params(), (out_channels,))
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, L, C_in) → (B, (L - 1)s - 2p + k, C_out)."""
        k = self.kernel.shape[0]
        pad = k - 1 - self.padding
        # A transposed conv = a correlation of the s-dilated input with the tap-flipped kernel.
        y = jax.lax.conv_general_dilated(
            x,
            self.kernel[...][::-1],
            window_strides=(1,),
            padding=[(pad, pad)],
            lhs_dilation=(self.stride,),
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...]


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[Axis, Axis],
    *,
    use_bias: bool = True,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """``nnx.Linear`` with torch's default init and logical axes on kernel and bias."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=partitioned(_torch_default_init, axes),
        bias_init=partitioned(nnx.initializers.zeros, (axes[1],)),
        rngs=rngs,
    )


def layer_norm(features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """Torch ``LayerNorm(features)`` semantics: eps 1e-5, two-pass variance."""
    return nnx.LayerNorm(
        features,
        epsilon=1e-5,
        use_fast_variance=False,
        scale_init=partitioned(nnx.initializers.ones, ("norm",)),
        bias_init=partitioned(nnx.initializers.zeros, ("norm",)),
        rngs=rngs,
    )


def group_norm(groups: int, features: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """Torch ``GroupNorm(groups, features)`` on (B, T, C): stats over T and each channel group."""
    return nnx.GroupNorm(
        features,
        num_groups=groups,
        epsilon=1e-5,
        use_fast_variance=False,
        scale_init=partitioned(nnx.initializers.ones, ("norm",)),
        bias_init=partitioned(nnx.initializers.zeros, ("norm",)),
        rngs=rngs,
    )


def mish(x: jax.Array) -> jax.Array:
    """Mish(x) = x · tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


def is_static(n: Any) -> bool:
    """True for a concrete length; False for a ``jax.export`` symbolic dimension."""
    return isinstance(n, (int, np.integer))


def frames_per_token(input_frame_rate: float = 12.5) -> Fraction:
    """Exact mel frames per token, (22050 / 256) / rate: 441/64 at 12.5 Hz."""
    return Fraction(22050, 256) / Fraction(input_frame_rate).limit_denominator(10**6)


def frames_from_tokens(num_tokens: Any, input_frame_rate: float = 12.5) -> Any:
    """Mel frames for N tokens: int32(f32(f32(f32(N) / rate) · 22050) / 256) (decoder.md §2).

    The float32 rounding is part of the spec: float64 gives another T at 43 values of N ≤ 20000
    (e.g. 2240 → 15435 in f32, 15434 in f64).

    A symbolic N (``jax.export``) gives the dimension expression ⌊N · p / q⌋ with p / q =
    ``frames_per_token(rate)``; it equals the float32 rule only up to a limit (3391 tokens at
    12.5 Hz; the exporter checks the range it promises).
    """
    if not is_static(num_tokens):
        ratio = frames_per_token(input_frame_rate)
        return (num_tokens * ratio.numerator) // ratio.denominator
    f32 = np.float32
    seconds = f32(num_tokens) / f32(input_frame_rate)
    return int(f32(f32(seconds) * f32(22050)) / f32(256))


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Torch nearest-interpolation source indices: min(⌊f32(i) · f32(n_in / n_out)⌋, n_in - 1).

    The exact-integer rule ⌊i · n_in / n_out⌋ picks another source in 88 of 940 tested length
    pairs (decoder.md §13.2), so the float32 product is kept.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def nearest_resize(x: jax.Array, n_out: Any) -> jax.Array:
    """Nearest-neighbour resize of (B, N, C) along time to (B, n_out, C), torch's index rule.

    Static lengths use ``nearest_indices``; symbolic ones (``jax.export``) the same float32
    formula in jnp, which gives the same integers.
    """
    n_in = x.shape[1]
    if is_static(n_in) and is_static(n_out):
        return jnp.take(x, jnp.asarray(nearest_indices(n_in, n_out)), axis=1)
    scale = jnp.asarray(n_in, jnp.float32) / jnp.asarray(n_out, jnp.float32)
    idx = jnp.floor(jnp.arange(n_out, dtype=jnp.float32) * scale).astype(jnp.int32)
    return jnp.take(x, jnp.minimum(idx, n_in - 1), axis=1)


def nearest_resize_lengths(
    x: jax.Array, n_in: jax.Array, n_out: jax.Array, width: int
) -> jax.Array:
    """Per-row ``nearest_resize`` of a padded batch: row b maps its n_in[b] valid steps to n_out[b].

    The index rule is ``nearest_indices``' float32 one, per row: min(⌊f32(i) · f32(n_in / n_out)⌋,
    n_in - 1), so an unpadded row gets exactly the frames of ``nearest_resize``. Frames at or past
    n_out[b] are gathered too (from the last valid step); callers mask them.

    Args:
      x: (B, N, C) padded steps.
      n_in: (B,) int valid steps per row (>= 1).
      n_out: (B,) int valid output frames per row (>= 1).
      width: T, the padded output length.

    Returns:
      (B, T, C).
    """
    scale = n_in.astype(jnp.float32) / jnp.maximum(n_out, 1).astype(jnp.float32)  # (B,)
    idx = jnp.floor(jnp.arange(width, dtype=jnp.float32)[None, :] * scale[:, None])  # (B, T)
    idx = jnp.minimum(idx.astype(jnp.int32), n_in[:, None].astype(jnp.int32) - 1)
    return jnp.take_along_axis(x, idx[:, :, None], axis=1)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout with an explicit key (training); ``key`` None or rate 0 → ``x`` itself.

    The models keep no RNG state, so the parameter trees (and the release converter's tables)
    are the same in training and inference.
    """
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def sinusoidal_embedding(t: jax.Array, dim: int, scale: float = 1000.0) -> jax.Array:
    """Matcha ``SinusoidalPosEmb``: [sin(a) ∥ cos(a)], a_k = s·t·exp(-k ln(1e4) / (dim/2 - 1)).

    Args:
      t: (B,) times.
      dim: embedding width (even).
      scale: multiplier of t (1000).

    Returns:
      (B, dim) float32.
    """
    half = dim // 2
    freqs = jnp.exp(
        jnp.arange(half, dtype=jnp.float32) * jnp.float32(-math.log(10000.0) / (half - 1))
    )
    a = (scale * t.astype(jnp.float32))[:, None] * freqs[None, :]  # (B, half)
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)
