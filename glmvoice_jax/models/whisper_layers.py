"""Whisper transformer layers (encoder and decoder blocks) and their attention masks, Flax NNX.

Ref: transformers ``models/whisper/modeling_whisper.py`` (``WhisperAttention``,
``WhisperEncoderLayer``, ``WhisperDecoderLayer``) and GLM-4-Voice
``speech_tokenizer/modeling_whisper.py`` @ eb00ce9 (``WhisperVQEncoderLayer``,
``get_block_causal_attention_mask``). Parameter names follow the HF checkpoints (q_proj, k_proj,
v_proj, out_proj, self_attn_layer_norm, encoder_attn, fc1, fc2, final_layer_norm), so the rename
table in ``convert/whisper.py`` is one line per tensor.

Math, as the references: pre-LN blocks, LayerNorm eps 1e-5 with float32 statistics, q scaled by
head_dim**-0.5 after its bias, k_proj without bias, softmax in float32, exact (erf) GELU.

Axes: B batch, T query length, S key length, D embed, F mlp, N heads, H head dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from glmvoice_jax import sharding

ACT = ("act_batch", "act_len", "act_embed")
_NEG = -1e30  # finite: a fully masked row (padding query) gives a uniform softmax, not NaN


class KeySequence:
    """Per-parameter PRNG keys fold_in(key, 0), fold_in(key, 1), ... with a Python counter.

    Drop-in for ``nnx.Rngs`` in constructors (``.params()``). Each draw from an ``nnx.Rngs``
    updates its counter Variable; under tracing (``nnx.eval_shape``, a jitted constructor) that
    costs time quadratic in the number of draws: 32 s for the 64-layer large-v3 model vs ~1 s.
    """

    def __init__(self, rngs: nnx.Rngs | KeySequence | jax.Array):
        if isinstance(rngs, KeySequence):
            rngs = rngs.params()
        self.key = rngs.params() if isinstance(rngs, nnx.Rngs) else rngs
        self.count = 0

    def params(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count - 1)


def param(rngs, init, shape: Sequence[int], axes: tuple, dtype) -> nnx.Param:
    """A Param with logical axis names, not eagerly sharded (models also run outside a mesh)."""
    init = nnx.with_partitioning(init, axes, eager_sharding=False)
    return nnx.Param(init(rngs.params(), tuple(shape), dtype))


def block_causal_mask(key_mask: jax.Array, block_size: int | None) -> jax.Array:
    """[B, S, S] bool: query i may attend key j (glm4voice.md §2.4).

    allowed(i, j) = key_valid(j) and j < block_size * (i // block_size + 1): bidirectional inside a
    block, causal across blocks. ``block_size`` None is bidirectional (stock Whisper); 1 is causal.

    Args:
      key_mask: [B, S] valid frames.
      block_size: frames per block, or None.
    """
    s = key_mask.shape[1]
    allowed = key_mask.astype(bool)[:, None, :]  # (B, 1, S)
    if block_size is None:
        return jnp.broadcast_to(allowed, (key_mask.shape[0], s, s))
    i = jnp.arange(s)[:, None]
    j = jnp.arange(s)[None, :]
    return allowed & (j < block_size * (i // block_size + 1))[None]


def causal_mask(key_mask: jax.Array) -> jax.Array:
    """[B, T, T] bool: causal with key padding (the decoder's self-attention)."""
    return block_causal_mask(key_mask, 1)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Dense(nnx.Module):
    """x [..., *in_shape] -> [..., *out_shape]; kernel [*in_shape, *out_shape], optional bias."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        in_axes: tuple,
        out_axes: tuple,
        *,
        use_bias: bool = True,
        init_std: float,
        dtype,
        param_dtype,
        rngs: nnx.Rngs,
    ):
        self.num_in = len(in_shape)
        self.dtype = dtype
        init = nnx.initializers.normal(init_std)
        self.kernel = param(rngs, init, in_shape + out_shape, in_axes + out_axes, param_dtype)
        if use_bias:
            self.bias = param(rngs, nnx.initializers.zeros, out_shape, out_axes, param_dtype)
        else:
            self.bias = None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        y = jnp.tensordot(x, self.kernel[...].astype(self.dtype), axes=self.num_in)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class Attention(nnx.Module):
    """Multi-head attention; keys/values from ``kv`` (self-attention when it is the query input)."""

    def __init__(self, embed_dim: int, num_heads: int, *, init_std, dtype, param_dtype, rngs):
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        d, n, h = embed_dim, num_heads, embed_dim // num_heads
        kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.head_dim = h
        self.q_proj = Dense((d,), (n, h), ("embed",), ("heads", "head_dim"), **kw)
        self.k_proj = Dense((d,), (n, h), ("embed",), ("heads", "head_dim"), use_bias=False, **kw)
        self.v_proj = Dense((d,), (n, h), ("embed",), ("heads", "head_dim"), **kw)
        self.out_proj = Dense((n, h), (d,), ("heads", "head_dim"), ("embed",), **kw)

    def __call__(self, x: jax.Array, kv: jax.Array, mask: jax.Array) -> jax.Array:
        """Attends x [B, T, D] to kv [B, S, D] where mask [B, T, S] is true; -> [B, T, D]."""
        k, v = self.keys_values(kv)
        return self.attend(x, k, v, mask)

    def keys_values(self, kv: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Projections of kv [B, S, D] to keys and values [B, S, N, H] (what a KV cache holds)."""
        return self.k_proj(kv), self.v_proj(kv)

    def attend(self, x: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
        """Attends x [B, T, D] to projected k, v [B, S, N, H] where mask [B, T, S]; -> [B, T, D]."""
        q = self.q_proj(x) * (self.head_dim**-0.5)  # (B, T, N, H)
        scores = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32)
        scores = jnp.where(mask[:, None, :, :], scores, _NEG)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("BNTS,BSNH->BTNH", probs, v)  # (B, T, N, H)
        return self.out_proj(out)


class EncoderLayer(nnx.Module):
    """Pre-LN self-attention block: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))."""

    def __init__(self, embed_dim, num_heads, mlp_dim, *, eps, init_std, dtype, param_dtype, rngs):
        kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(
            embed_dim, eps=eps, param_dtype=param_dtype, rngs=rngs
        )
        self.self_attn = Attention(embed_dim, num_heads, **kw)
        self.final_layer_norm = LayerNorm(embed_dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Dense((embed_dim,), (mlp_dim,), ("embed",), ("mlp",), **kw)
        self.fc2 = Dense((mlp_dim,), (embed_dim,), ("mlp",), ("embed",), **kw)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """Maps x [B, T, D] with the attention mask [B, T, T] to [B, T, D]."""
        h = self.self_attn_layer_norm(x)
        x = x + self.self_attn(h, h, mask).astype(x.dtype)
        h = jax.nn.gelu(self.fc1(self.final_layer_norm(x)), approximate=False)
        x = x + self.fc2(h).astype(x.dtype)
        return sharding.constrain(x, ACT)


class DecoderLayer(nnx.Module):
    """Pre-LN causal self-attention, cross-attention to the encoder, then the MLP."""

    def __init__(self, embed_dim, num_heads, mlp_dim, *, eps, init_std, dtype, param_dtype, rngs):
        kw = dict(init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(
            embed_dim, eps=eps, param_dtype=param_dtype, rngs=rngs
        )
        self.self_attn = Attention(embed_dim, num_heads, **kw)
        self.encoder_attn_layer_norm = LayerNorm(
            embed_dim, eps=eps, param_dtype=param_dtype, rngs=rngs
        )
        self.encoder_attn = Attention(embed_dim, num_heads, **kw)
        self.final_layer_norm = LayerNorm(embed_dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Dense((embed_dim,), (mlp_dim,), ("embed",), ("mlp",), **kw)
        self.fc2 = Dense((mlp_dim,), (embed_dim,), ("mlp",), ("embed",), **kw)

    def __call__(self, x, self_mask, enc, cross_mask) -> jax.Array:
        """Maps x [B, T, D] to [B, T, D] (self_mask [B, T, T], enc [B, S, D], cross [B, T, S])."""
        h = self.self_attn_layer_norm(x)
        x = x + self.self_attn(h, h, self_mask).astype(x.dtype)
        h = self.encoder_attn_layer_norm(x)
        x = x + self.encoder_attn(h, enc, cross_mask).astype(x.dtype)
        return self._mlp(x)

    def _mlp(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(self.fc1(self.final_layer_norm(x)), approximate=False)
        x = x + self.fc2(h).astype(x.dtype)
        return sharding.constrain(x, ACT)

    def cached(self, x, cache, index, self_mask, cross_kv, cross_mask):
        """Incremental decoding: x [B, T, D] at positions index..index+T-1, with a KV cache.

        Args:
          x: [B, T, D] new positions.
          cache: (keys, values) [B, S, N, H] of the self-attention, S = cache length.
          index: int scalar, position of x[:, 0]; its keys/values are written at index.
          self_mask: [B, T, S] which cache slots each new position sees (causal incl. itself).
          cross_kv: (keys, values) [B, E, N, H] of the encoder output (``keys_values``).
          cross_mask: [B, T, E] valid encoder frames.

        Returns:
          (x [B, T, D], updated cache).
        """
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.keys_values(h)  # (B, T, N, H)
        ck = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), index, 1)
        cv = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), index, 1)
        x = x + self.self_attn.attend(h, ck, cv, self_mask).astype(x.dtype)
        h = self.encoder_attn_layer_norm(x)
        x = x + self.encoder_attn.attend(h, *cross_kv, cross_mask).astype(x.dtype)
        return self._mlp(x), (ck, cv)
