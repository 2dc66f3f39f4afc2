"""Dot-product attention for packed rows: causal + segment masks, grouped-query heads.

Softmax is computed in float32 whatever the compute dtype (GLM-4 `attention_softmax_in_fp32`,
glm4voice.md §4.2). Two implementations with identical math:

* ``"xla"``: one [B, K, G, T, S] score tensor. Simple and fastest for short rows.
* ``"chunked"``: queries processed in blocks of ``chunk_size`` under ``jax.checkpoint`` in a
  ``lax.map``, so the live score tensor is [B, K, G, chunk, S]: what makes seq 8192 fit without a
  fused kernel (the 9B configs' choice; its memory is bounded by one block whatever the compiler).
* ``"causal_blocks"``: the same blocks in a Python loop, block i against keys [0, (i + 1) chunk)
  only, so the blocks above the causal diagonal are never computed: (n + 1) / 2n of the score work
  for n blocks. The fastest portable form where compute is the limit (the CPU: bench/train_step.py).
  The blocks are independent ops, and XLA may schedule several at once: the 9B v6e-256 step needs
  38.2 GiB per chip with it against 18.2 with "chunked" (docs/aot.md), while on v5p it is 2 GiB
  smaller. Use it where memory is not the limit, and check with glmvoice-aot.

Both accumulate the two matmuls in float32 (matmul.einsum): bf16 compute runs bf16 x bf16 ->
float32 dots forward and backward.

Axes: B batch, T query length, S key length, N query heads, K kv heads, G = N / K queries per kv
head, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glmvoice_jax.models import matmul

_NEG = -1e30  # large finite negative: fully masked rows (padding) stay NaN-free


def packed_causal_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_offset=0):
    """[B, T, S] bool: key j visible from query i iff same segment and j <= i + q_offset.

    Segments are contiguous runs in a packed row, so index-causality within the row equals
    causality within the document. Padding (segment 0) attends to padding only.
    """
    t = q_segment_ids.shape[1]
    s = kv_segment_ids.shape[1]
    qi = jnp.arange(t)[:, None] + q_offset
    kj = jnp.arange(s)[None, :]
    causal = kj <= qi  # (T, S)
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]  # (B, T, S)
    return same & causal[None]


def _attend(q, k, v, mask, scale):
    """Q (B,T,K,G,H), k/v (B,S,K,H), mask (B,T,S) -> (B,T,K,G,H)."""
    scores = matmul.einsum("BTKGH,BSKH->BKGTS", q, k, out_dtype=jnp.float32) * scale
    scores = jnp.where(mask[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return matmul.einsum("BKGTS,BSKH->BTKGH", probs, v)


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    impl: str = "xla",
    chunk_size: int = 512,
) -> jax.Array:
    """Causal attention within packed segments.

    Args:
      q: [B, T, N, H] queries (rotary already applied).
      k: [B, T, K, H] keys; N must be a multiple of K (query head n uses kv head n // (N/K)).
      v: [B, T, K, H] values.
      segment_ids: [B, T] int, 0 = padding.
      impl: "xla", "chunked" or "causal_blocks" (see module docstring).
      chunk_size: query block of the chunked implementations.

    Returns:
      [B, T, N, H] in the dtype of v.
    """
    b, t, n, h = q.shape
    kh = k.shape[2]
    if n % kh:
        raise ValueError(f"num_heads ({n}) must be a multiple of num_kv_heads ({kh})")
    g = n // kh
    scale = 1.0 / float(h) ** 0.5
    q = q.reshape(b, t, kh, g, h)  # (B, T, K, G, H): head n -> (n // G, n % G)
    if impl == "xla" or t <= chunk_size:
        out = _attend(q, k, v, packed_causal_mask(segment_ids, segment_ids), scale)
    elif impl in ("chunked", "causal_blocks"):
        if t % chunk_size:
            raise ValueError(
                f"attention chunk_size ({chunk_size}) must divide the sequence length ({t})"
            )
        nc = t // chunk_size
        if impl == "chunked":
            qc = q.reshape(b, nc, chunk_size, kh, g, h).swapaxes(0, 1)  # (C, B, c, K, G, H)
            segc = segment_ids.reshape(b, nc, chunk_size).swapaxes(0, 1)  # (C, B, c)

            @jax.checkpoint
            def block(qb, segb, offset):
                mask = packed_causal_mask(segb, segment_ids, q_offset=offset)
                return _attend(qb, k, v, mask, scale)

            offsets = jnp.arange(nc) * chunk_size
            outc = jax.lax.map(lambda a: block(*a), (qc, segc, offsets))  # (C, B, c, K, G, H)
            out = outc.swapaxes(0, 1).reshape(b, t, kh, g, h)
        else:
            outs = []
            for i in range(nc):  # static key lengths: block i sees keys [0, (i + 1) * chunk)
                lo, hi = i * chunk_size, (i + 1) * chunk_size

                @jax.checkpoint
                def block(qb, segb, kb, vb, segk, lo=lo):
                    mask = packed_causal_mask(segb, segk, q_offset=lo)
                    return _attend(qb, kb, vb, mask, scale)

                sl = (slice(None), slice(lo, hi))
                sk = (slice(None), slice(0, hi))
                outs.append(block(q[sl], segment_ids[sl], k[sk], v[sk], segment_ids[sk]))
            out = jnp.concatenate(outs, axis=1)  # (B, T, K, G, H)
    else:
        raise ValueError(
            f"unknown attention impl {impl!r}; use 'xla', 'chunked' or 'causal_blocks'"
        )
    return out.reshape(b, t, n, h)  # (B, T, N, H)
