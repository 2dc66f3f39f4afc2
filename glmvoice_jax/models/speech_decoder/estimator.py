"""Flow-matching velocity estimator: a 1-D U-Net of ResNet and transformer blocks.

Ref: decoder.md §6 (``ConditionalDecoder``); GLM-4-Voice @ eb00ce9 ``cosyvoice/flow/decoder.py``
with Matcha-TTS @ dd9105b ``matcha/models/components/{decoder,transformer}.py`` and the
``Attention`` / ``GELU`` of diffusers 0.27.2. Parameter names follow them (``block1``,
``res_conv``, ``norm1``, ``to_q``, ``ff_proj`` = ``ff.net.0.proj``, ``ff_out`` = ``ff.net.2``).

Every ``x · mask`` of the reference is kept: padding is not numerically neutral (§13.2).
Training on padded batches passes ``hard_mask=True``, which makes it neutral: GroupNorm statistics
over the valid frames only and padded keys excluded from attention (-1e9 instead of the
reference's additive 0/1 bias). On an unpadded row both give the same result as the reference
form, which inference keeps (the default).

Axes: B batch, T frames (T2 = ⌈T/2⌉ one level down), C channels, E time-embedding width,
H heads, K head width, S key frames.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from glmvoice_jax.models.speech_decoder.layers import (
    Conv1d,
    ConvTranspose1d,
    group_norm,
    is_static,
    layer_norm,
    linear,
    mish,
    sinusoidal_embedding,
)


class Block1D(nnx.Module):
    """(Mish(GN8(Conv_k3(x·m)))) · m."""

    def __init__(self, dim: int, dim_out: int, *, rngs: nnx.Rngs):
        self.conv = Conv1d(dim, dim_out, 3, padding=1, rngs=rngs)
        self.norm = group_norm(8, dim_out, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, hard_mask: bool = False) -> jax.Array:
        h = self.conv(x * mask)
        if hard_mask:  # statistics over the valid frames only
            h = self.norm(h, mask=jnp.broadcast_to(mask > 0, h.shape))
        else:
            h = self.norm(h)
        return mish(h) * mask


class ResnetBlock1D(nnx.Module):
    """h = Block1D(x) + Linear(Mish(temb)); out = Block1D(h) + Conv_k1(x·m), unmasked (§6.3)."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, *, rngs: nnx.Rngs):
        self.mlp = linear(time_emb_dim, dim_out, ("mlp", "embed"), rngs=rngs)
        self.block1 = Block1D(dim, dim_out, rngs=rngs)
        self.block2 = Block1D(dim_out, dim_out, rngs=rngs)
        self.res_conv = Conv1d(dim, dim_out, 1, rngs=rngs)

    def __call__(
        self, x: jax.Array, mask: jax.Array, temb: jax.Array, hard_mask: bool = False
    ) -> jax.Array:
        """X (B, T, C_in), mask (B, T, 1), temb (B, E) → (B, T, C_out)."""
        h = self.block1(x, mask, hard_mask)
        h = h + self.mlp(mish(temb))[:, None, :]
        h = self.block2(h, mask, hard_mask)
        return h + self.res_conv(x * mask)


def _downsample_mask(mask: jax.Array, conv: Conv1d | ConvTranspose1d | None) -> jax.Array:
    """The mask at the resolution after ``conv``'s stride: mask[:, ::stride], (B, T2, 1).

    Under ``jax.export`` the length ⌈T/2⌉ of ``mask[:, ::2]`` and the conv's ⌊(T - 1)/2⌋ + 1
    are different symbolic expressions that jax cannot prove equal, so there the frames are
    picked by a one-hot convolution with the conv's own window (taps K, padding p, stride s:
    out[i] = mask[s·i]), which has the conv's length expression and the same values.
    """
    stride = conv.stride if isinstance(conv, Conv1d) else 1
    if is_static(mask.shape[1]):
        return mask[:, ::stride]
    taps = jnp.zeros((conv.kernel.shape[0], 1, 1), mask.dtype).at[conv.padding].set(1.0)
    return jax.lax.conv_general_dilated(
        mask,
        taps,
        window_strides=(stride,),
        padding=[(conv.padding, conv.padding)],
        dimension_numbers=("NWC", "WIO", "NWC"),
    )


class TransformerBlock(nnx.Module):
    """Matcha ``BasicTransformerBlock`` (layer_norm, self-attention only, exact-GELU FF)."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, rngs: nnx.Rngs):
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm1 = layer_norm(dim, rngs=rngs)
        self.to_q = linear(dim, inner, ("embed", "heads"), use_bias=False, rngs=rngs)
        self.to_k = linear(dim, inner, ("embed", "heads"), use_bias=False, rngs=rngs)
        self.to_v = linear(dim, inner, ("embed", "heads"), use_bias=False, rngs=rngs)
        self.to_out = linear(inner, dim, ("heads", "embed"), rngs=rngs)
        self.norm3 = layer_norm(dim, rngs=rngs)
        self.ff_proj = linear(dim, 4 * dim, ("embed", "mlp"), rngs=rngs)
        self.ff_out = linear(4 * dim, dim, ("mlp", "embed"), rngs=rngs)

    def __call__(
        self, x: jax.Array, attn_bias: jax.Array, matmul_dtype: str | None = None
    ) -> jax.Array:
        """Transformer block.

        Args:
          x: (B, T, C).
          attn_bias: (B, T, S) or (B, 1, S) float added to the logits. The reference passes the
            0/1 mask m mᵀ, which diffusers *adds* (SDPA float mask): a bias, not a hard mask.
          matmul_dtype: None = float32 throughout (exact mode, parity). "bfloat16" = the
            opt-in fast mode: the dense layers and both attention products take bfloat16
            inputs and accumulate in float32 (on a 2-core AVX-512 CPU about 1.7x the f32 dot
            rate; bf16 outputs would not be faster). Norms, softmax, GELU, residuals stay f32.

        Returns:
          (B, T, C).
        """
        b, t, _ = x.shape
        h = self.norm1(x)
        q = _dense(self.to_q, h, matmul_dtype).reshape(b, t, self.heads, self.head_dim)
        k = _dense(self.to_k, h, matmul_dtype).reshape(b, t, self.heads, self.head_dim)
        v = _dense(self.to_v, h, matmul_dtype).reshape(b, t, self.heads, self.head_dim)
        # q (B, T, H, K), k and v (B, S, H, K)
        scale = jnp.float32(self.head_dim**-0.5)
        logits = _einsum("bthk,bshk->bhts", q, k, matmul_dtype) * scale + attn_bias[:, None]
        probs = jax.nn.softmax(logits, axis=-1)
        attn = _einsum("bhts,bshk->bthk", probs, v, matmul_dtype).reshape(b, t, -1)  # (B, T, H·K)
        x = x + _dense(self.to_out, attn, matmul_dtype)
        h = jax.nn.gelu(_dense(self.ff_proj, self.norm3(x), matmul_dtype), approximate=False)
        return x + _dense(self.ff_out, h, matmul_dtype)


def _dense(layer: nnx.Linear, x: jax.Array, matmul_dtype: str | None) -> jax.Array:
    """``layer(x)``, or with ``matmul_dtype`` inputs and float32 accumulation (fast mode)."""
    if matmul_dtype is None:
        return layer(x)
    y = jax.lax.dot_general(
        x.astype(matmul_dtype),
        layer.kernel[...].astype(matmul_dtype),
        (((x.ndim - 1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return y if layer.bias is None else y + layer.bias[...]


def _einsum(spec: str, a: jax.Array, b: jax.Array, matmul_dtype: str | None) -> jax.Array:
    """``jnp.einsum``, or with ``matmul_dtype`` inputs and float32 accumulation (fast mode)."""
    if matmul_dtype is None:
        return jnp.einsum(spec, a, b)
    return jnp.einsum(
        spec, a.astype(matmul_dtype), b.astype(matmul_dtype), preferred_element_type=jnp.float32
    )


class UNetStage(nnx.Module):
    """One U-Net stage: resnet → transformer blocks → optional resampling conv (§6.4)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        time_emb_dim: int,
        heads: int,
        head_dim: int,
        n_blocks: int,
        sample: Conv1d | ConvTranspose1d | None,
        *,
        rngs: nnx.Rngs,
    ):
        self.resnet = ResnetBlock1D(dim, dim_out, time_emb_dim, rngs=rngs)
        self.transformer_blocks = nnx.List(
            [TransformerBlock(dim_out, heads, head_dim, rngs=rngs) for _ in range(n_blocks)]
        )
        self.sample = sample

    def body(
        self,
        x: jax.Array,
        mask: jax.Array,
        temb: jax.Array,
        hard_mask: bool = False,
        matmul_dtype: str | None = None,
    ) -> jax.Array:
        """Resnet + transformer blocks at this stage's resolution (no resampling)."""
        x = self.resnet(x, mask, temb, hard_mask)
        if hard_mask:  # padded keys get no weight; a constant shift of valid ones changes nothing
            attn_bias = jnp.where(jnp.swapaxes(mask, 1, 2) > 0, 0.0, -1e9)  # (B, 1, S)
        else:
            attn_bias = mask * jnp.swapaxes(mask, 1, 2)  # (B, T, 1) x (B, 1, T) → (B, T, T)
        for block in self.transformer_blocks:
            x = block(x, attn_bias, matmul_dtype)
        return x


class ConditionalUNet1D(nnx.Module):
    """``ConditionalDecoder``: v = est(x, mask, mu, t, spks, cond), channel-last."""

    def __init__(
        self,
        n_mels: int,
        channels: tuple[int, ...],
        heads: int,
        head_dim: int,
        n_blocks: int,
        num_mid_blocks: int,
        *,
        rngs: nnx.Rngs,
    ):
        in_channels = 4 * n_mels  # [x, mu, spks, cond]
        temb = 4 * channels[0]
        self.in_channels = in_channels
        self.time_linear_1 = linear(in_channels, temb, ("embed", "mlp"), rngs=rngs)
        self.time_linear_2 = linear(temb, temb, ("mlp", "embed"), rngs=rngs)

        def stage(dim: int, dim_out: int, sample: Conv1d | ConvTranspose1d | None) -> UNetStage:
            return UNetStage(dim, dim_out, temb, heads, head_dim, n_blocks, sample, rngs=rngs)

        down = []
        for i, ch in enumerate(channels):
            dim = in_channels if i == 0 else channels[i - 1]
            last = i == len(channels) - 1
            stride = 1 if last else 2
            down.append(stage(dim, ch, Conv1d(ch, ch, 3, stride=stride, padding=1, rngs=rngs)))
        self.down_blocks = nnx.List(down)
        self.mid_blocks = nnx.List(
            [stage(channels[-1], channels[-1], None) for _ in range(num_mid_blocks)]
        )
        up_channels = tuple(reversed(channels)) + (channels[0],)
        up = []
        for i in range(len(up_channels) - 1):
            dim_out = up_channels[i + 1]
            if i == len(up_channels) - 2:
                sample = Conv1d(dim_out, dim_out, 3, padding=1, rngs=rngs)
            else:
                sample = ConvTranspose1d(dim_out, dim_out, 4, stride=2, padding=1, rngs=rngs)
            up.append(stage(2 * up_channels[i], dim_out, sample))
        self.up_blocks = nnx.List(up)
        self.final_block = Block1D(up_channels[-1], up_channels[-1], rngs=rngs)
        self.final_proj = Conv1d(up_channels[-1], n_mels, 1, out_axis=None, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        mu: jax.Array,
        t: jax.Array,
        spks: jax.Array,
        cond: jax.Array,
        hard_mask: bool = False,
        matmul_dtype: str | None = None,
    ) -> jax.Array:
        """Velocity field.

        Args:
          x: (B, T, M) current sample x_t.
          mask: (B, T, 1) float 0/1.
          mu: (B, T, M) encoder output after the length regulator.
          t: (B,) flow time.
          spks: (B, M) speaker vector.
          cond: (B, T, M) prompt mel (zeros outside the prompt).
          hard_mask: padding-neutral masking for padded training batches (module docstring);
            False = the reference's form (inference, parity).
          matmul_dtype: None = exact float32; "bfloat16" = fast mode (``TransformerBlock``).

        Returns:
          (B, T, M).
        """
        temb = sinusoidal_embedding(t, self.in_channels)  # (B, 4M)
        temb = self.time_linear_2(jax.nn.silu(self.time_linear_1(temb)))  # (B, E)
        spks_t = jnp.broadcast_to(spks[:, None, :], mu.shape)  # (B, T, M)
        x = jnp.concatenate([x, mu, spks_t, cond], axis=-1)  # (B, T, 4M)

        masks = [mask]
        skips = []
        for stage in self.down_blocks:
            m = masks[-1]
            x = stage.body(x, m, temb, hard_mask, matmul_dtype)
            skips.append(x)
            x = stage.sample(x * m)
            masks.append(_downsample_mask(m, stage.sample))  # (B, T2, 1)
        masks = masks[:-1]
        for stage in self.mid_blocks:
            x = stage.body(x, masks[-1], temb, hard_mask, matmul_dtype)
        for stage in self.up_blocks:
            m = masks.pop()
            skip = skips.pop()
            # Trim the transposed conv's odd-T overshoot before the skip concat.
            x = jnp.concatenate([x[:, : skip.shape[1]], skip], axis=-1)  # (B, T, 2C)
            x = stage.body(x, m, temb, hard_mask, matmul_dtype)
            x = stage.sample(x * m)
        x = self.final_block(x, m, hard_mask)
        return self.final_proj(x * m) * mask
