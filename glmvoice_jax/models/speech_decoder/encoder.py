"""Token encoder of the flow: a pre-LN Transformer with ESPnet relative-position attention.

Ref: decoder.md §4 (``BlockConformerEncoder`` with use_cnn_module = macaron_style = False);
GLM-4-Voice @ eb00ce9 ``cosyvoice/transformer/{encoder,encoder_layer,attention,embedding,
subsampling}.py``. Parameter names follow it (``linear_q``, ``pos_bias_u``, ``norm_mha``, ...).

Axes: B batch, N tokens (query), M tokens (key), P = 2N - 1 relative positions, D model width,
H heads, K head width (D = H·K), F FFN width.

Training (``dropout_key`` given): dropout at the reference's places, all at ``dropout_rate``
(decoder.md §1.1: 0.1): the embedding after its LayerNorm, after the √D scaling, the position
table, the attention probabilities, both residual branches and the FFN's inner activation.
Inference passes no key and runs in eval mode (§14).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models.speech_decoder.layers import (
    dropout,
    is_static,
    layer_norm,
    linear,
    partitioned,
)


def rel_pos_table(n: Any, d: int) -> np.ndarray | jax.Array:
    """ESPnet relative-position table (decoder.md §4.1), float32 (P, D).

    Row k encodes the relative distance r = n - 1 - k (positive distances first):
    pe(r)[2m] = sin(r ω_m), pe(r)[2m + 1] = cos(r ω_m), ω_m = exp(-2m ln(1e4) / d).
    A static n gives a numpy constant; a symbolic n (``jax.export``) the same formula in jnp.
    """
    f32 = np.float32
    xp = np if is_static(n) else jnp
    omega = np.exp(np.arange(0, d, 2, dtype=f32) * f32(-(math.log(10000.0) / d)))  # (D/2,)
    r = ((n - 1) - xp.arange(2 * n - 1)).astype(f32)  # (P,): n-1 ... -(n-1)
    angle = r[:, None] * omega[None, :]  # (P, D/2)
    return xp.stack([xp.sin(angle), xp.cos(angle)], axis=-1).reshape(2 * n - 1, d)  # interleave


def block_causal_mask(n: Any, block_size: int) -> np.ndarray | jax.Array:
    """allowed[i, j] = j < block · (⌊i / block⌋ + 1): causal, plus the rest of i's block (§4.4)."""
    xp = np if is_static(n) else jnp
    i = xp.arange(n)[:, None]
    j = xp.arange(n)[None, :]
    return j < block_size * (i // block_size + 1)


class RelPosMHA(nnx.Module):
    """``RelPositionMultiHeadedAttention`` with the block mask applied as -inf (§4.3)."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads, self.head_dim = heads, dim // heads
        self.linear_q = linear(dim, dim, ("embed", "heads"), rngs=rngs)
        self.linear_k = linear(dim, dim, ("embed", "heads"), rngs=rngs)
        self.linear_v = linear(dim, dim, ("embed", "heads"), rngs=rngs)
        self.linear_out = linear(dim, dim, ("heads", "embed"), rngs=rngs)
        self.linear_pos = linear(dim, dim, ("embed", "heads"), use_bias=False, rngs=rngs)
        bias_init = partitioned(nnx.initializers.glorot_uniform(), ("heads", "head_dim"))
        self.pos_bias_u = nnx.Param(bias_init(rngs.params(), (heads, self.head_dim)))
        self.pos_bias_v = nnx.Param(bias_init(rngs.params(), (heads, self.head_dim)))

    def __call__(
        self,
        x: jax.Array,
        pos_emb: jax.Array,
        allowed: jax.Array,
        rate: float = 0.0,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Self-attention.

        Args:
          x: (B, N, D).
          pos_emb: (P, D) relative-position table, P = 2N - 1.
          allowed: (B, N, M) bool; False → score -inf and probability 0.
          rate: dropout rate of the attention probabilities (training).
          dropout_key: dropout key; None → no dropout.

        Returns:
          (B, N, D).
        """
        b, n, d = x.shape
        h, k = self.heads, self.head_dim
        q = self.linear_q(x).reshape(b, n, h, k)  # (B, N, H, K)
        key = self.linear_k(x).reshape(b, n, h, k)  # (B, M, H, K)
        val = self.linear_v(x).reshape(b, n, h, k)  # (B, M, H, K)
        p = self.linear_pos(pos_emb).reshape(2 * n - 1, h, k)  # (P, H, K)
        ac = jnp.einsum("bnhk,bmhk->bhnm", q + self.pos_bias_u[...], key)
        bd = jnp.einsum("bnhk,phk->bhnp", q + self.pos_bias_v[...], p)  # (B, H, N, P)
        # rel_shift: bd'[i, j] = bd[i, N - 1 - i + j], the column of relative distance i - j.
        xp = np if is_static(n) else jnp
        shift = (n - 1) - xp.arange(n)[:, None] + xp.arange(n)[None, :]  # (N, M)
        bd = jnp.take_along_axis(bd, jnp.asarray(shift)[None, None], axis=-1)  # (B, H, N, M)
        scores = (ac + bd) / jnp.float32(math.sqrt(k))
        mask = allowed[:, None, :, :]  # (B, 1, N, M)
        # finfo.min instead of -inf: identical wherever a row has a valid key, NaN-free otherwise.
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        probs = dropout(jnp.where(mask, jax.nn.softmax(scores, axis=-1), 0.0), rate, dropout_key)
        out = jnp.einsum("bhnm,bmhk->bnhk", probs, val).reshape(b, n, d)  # (B, N, D)
        return self.linear_out(out)


class EncoderLayer(nnx.Module):
    """Pre-LN layer: x += MHA(LN_mha(x)); x += w_2(SiLU(w_1(LN_ff(x)))) (§4.2)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, *, rngs: nnx.Rngs):
        self.norm_mha = layer_norm(dim, rngs=rngs)
        self.self_attn = RelPosMHA(dim, heads, rngs=rngs)
        self.norm_ff = layer_norm(dim, rngs=rngs)
        self.w_1 = linear(dim, ffn_dim, ("embed", "mlp"), rngs=rngs)
        self.w_2 = linear(ffn_dim, dim, ("mlp", "embed"), rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        pos_emb: jax.Array,
        allowed: jax.Array,
        rate: float = 0.0,
        key: jax.Array | None = None,
    ) -> jax.Array:
        keys = [None] * 4 if key is None else list(jax.random.split(key, 4))
        h = self.self_attn(self.norm_mha(x), pos_emb, allowed, rate, keys[0])
        x = x + dropout(h, rate, keys[1])
        h = dropout(jax.nn.silu(self.w_1(self.norm_ff(x))), rate, keys[2])
        return x + dropout(self.w_2(h), rate, keys[3])


class TokenEncoder(nnx.Module):
    """Linear → LN → ×√D → layers → after_norm, with a block-causal mask (§4)."""

    def __init__(
        self,
        input_size: int,
        dim: int,
        heads: int,
        ffn_dim: int,
        num_blocks: int,
        block_size: int,
        *,
        dropout_rate: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if dim % heads:
            raise ValueError(f"encoder width {dim} must be divisible by its heads ({heads})")
        self.dim, self.block_size, self.dropout_rate = dim, block_size, dropout_rate
        self.embed_linear = linear(input_size, dim, (None, "embed"), rngs=rngs)
        self.embed_norm = layer_norm(dim, rngs=rngs)
        self.layers = nnx.List(
            [EncoderLayer(dim, heads, ffn_dim, rngs=rngs) for _ in range(num_blocks)]
        )
        self.after_norm = layer_norm(dim, rngs=rngs)

    def __call__(
        self, x: jax.Array, valid: jax.Array, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Encodes embedded tokens.

        Args:
          x: (B, N, D_in) token embeddings (already zeroed at padding).
          valid: (B, N) bool, False at padding.
          dropout_key: training only: dropout at ``dropout_rate``; None → eval mode.

        Returns:
          (B, N, D).
        """
        n = x.shape[1]
        rate = self.dropout_rate
        keys = [None] * (3 + len(self.layers))
        if dropout_key is not None:
            keys = list(jax.random.split(dropout_key, len(keys)))
        x = dropout(self.embed_norm(self.embed_linear(x)), rate, keys[0])
        x = dropout(x * jnp.float32(math.sqrt(self.dim)), rate, keys[1])
        pos_emb = dropout(jnp.asarray(rel_pos_table(n, self.dim)), rate, keys[2])  # (P, D)
        allowed = valid[:, None, :] & jnp.asarray(block_causal_mask(n, self.block_size))[None]
        for layer, key in zip(self.layers, keys[3:]):
            x = layer(x, pos_emb, allowed, rate, key)
        return self.after_norm(x)
