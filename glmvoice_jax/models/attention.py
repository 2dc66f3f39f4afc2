"""Dot-product attention for packed rows: causal + segment masks, grouped-query heads.

Softmax is computed in float32 whatever the compute dtype (GLM-4 `attention_softmax_in_fp32`,
glm4voice.md §4.2). Two implementations with identical math:

* ``"xla"``: one [B, K, G, T, S] score tensor. Simple and fastest for short rows.
* ``"chunked"``: queries processed in blocks of ``chunk_size`` under ``jax.checkpoint`` in a
  ``lax.map``, so the live score tensor is [B, K, G, chunk, S]: what makes seq 8192 fit without a
  fused kernel (the 9B configs' choice; its memory is bounded by one block whatever the compiler).
* ``"causal_blocks"``: the same blocks in a Python loop, block i against keys [0, (i + 1) chunk)
  only, so the blocks above the causal diagonal are never computed: (n + 1) / 2n of the score work
  for n blocks. Its backward pass is the flash-attention one (``_causal_blocks``: P recomputed
  from the saved log-sum-exp, sum(dP * P) as dO . O, dk and dv accumulated in float32), so no
  T x S tensor is saved. The fastest portable form where compute is the limit (the CPU:
  bench/train_step.py). The blocks are independent ops, and XLA may schedule several at once: the
  9B v6e-256 step needed 38.2 GiB per chip with it (before the flash backward) against 18.2 with
  "chunked" (docs/aot.md). Use it where memory is not the limit, and check with glmvoice-aot.

All accumulate the matmuls in float32 (matmul.einsum): bf16 compute runs bf16 x bf16 -> float32
dots forward and backward.

Axes: B batch, T query length, S key length, N query heads, K kv heads, G = N / K queries per kv
head, H head dim.
"""

from __future__ import annotations

import functools

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


def _masked_scores(q, k, mask, scale):
    scores = matmul.einsum("BTKGH,BSKH->BKGTS", q, k, out_dtype=jnp.float32) * scale
    return jnp.where(mask[:, None, None], scores, _NEG)  # (B, K, G, T, S) float32


def _flash_fwd(q, k, v, mask, scale):
    """``_attend``'s numbers, plus the log-sum-exp per query (B, K, G, T, 1) for the backward."""
    scores = _masked_scores(q, k, mask, scale)
    top = jnp.max(scores, axis=-1, keepdims=True)
    e = jnp.exp(scores - top)
    total = jnp.sum(e, axis=-1, keepdims=True)
    o = matmul.einsum("BKGTS,BSKH->BTKGH", (e / total).astype(v.dtype), v)
    return o, top + jnp.log(total)


def _flash_bwd(q, k, v, mask, scale, o, lse, do):
    """One block's gradients: dq in q's dtype, dk and dv in float32; P recomputed from lse."""
    p = jnp.exp(_masked_scores(q, k, mask, scale) - lse)  # masked entries: exp(-1e30) = 0
    dv = matmul.einsum("BKGTS,BTKGH->BSKH", p.astype(v.dtype), do, out_dtype=jnp.float32)
    dp = matmul.einsum("BTKGH,BSKH->BKGTS", do, v, out_dtype=jnp.float32)
    # sum_s dP * P = dO . O per query: a reduction over H instead of S.
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)  # (B, T, K, G)
    delta = jnp.transpose(delta, (0, 2, 3, 1))[..., None]  # (B, K, G, T, 1)
    ds = (p * (dp - delta) * scale).astype(q.dtype)
    dq = matmul.einsum("BKGTS,BSKH->BTKGH", ds, k)
    dk = matmul.einsum("BKGTS,BTKGH->BSKH", ds, q, out_dtype=jnp.float32)
    return dq, dk, dv


def _blocks(t: int, chunk: int):
    """(lo, hi) of each query block; block i sees keys [0, hi)."""
    return [(i * chunk, (i + 1) * chunk) for i in range(t // chunk)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _causal_blocks(q, k, v, segment_ids, chunk, scale):
    """The "causal_blocks" implementation, with the flash-attention backward pass.

    Autodiff of the softmax keeps each block's [.., c, S] probabilities for the backward pass,
    reduces dP * P over S per query, and sums each block's dk, dv into the prefix it saw through
    bf16 pads. This rule saves only o and the log-sum-exp per query, recomputes P from them, uses
    sum(dP * P) = dO . O (Dao et al. 2022, FlashAttention, Algorithm 4), and accumulates dk, dv
    in float32 in place. Same forward numbers as ``_attend``; nothing of size T x S is saved, so
    the blocks need no ``jax.checkpoint``. With glm.apply_rotary's rule: -13 % on the bf16 CPU train
    step (docs/benchmarks.md).
    """
    return _causal_blocks_fwd(q, k, v, segment_ids, chunk, scale)[0]


def _causal_blocks_fwd(q, k, v, segment_ids, chunk, scale):
    outs, lses = [], []
    for lo, hi in _blocks(q.shape[1], chunk):
        mask = packed_causal_mask(segment_ids[:, lo:hi], segment_ids[:, :hi], q_offset=lo)
        o, lse = _flash_fwd(q[:, lo:hi], k[:, :hi], v[:, :hi], mask, scale)
        outs.append(o)
        lses.append(lse)
    o = jnp.concatenate(outs, axis=1)  # (B, T, K, G, H)
    return o, (q, k, v, segment_ids, o, jnp.concatenate(lses, axis=3))  # lse (B, K, G, T, 1)


def _causal_blocks_bwd(chunk, scale, res, do):
    q, k, v, segment_ids, o, lse = res
    dqs = []
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)
    for lo, hi in _blocks(q.shape[1], chunk):
        mask = packed_causal_mask(segment_ids[:, lo:hi], segment_ids[:, :hi], q_offset=lo)
        dq_b, dk_b, dv_b = _flash_bwd(
            q[:, lo:hi],
            k[:, :hi],
            v[:, :hi],
            mask,
            scale,
            o[:, lo:hi],
            lse[:, :, :, lo:hi],
            do[:, lo:hi],
        )
        dqs.append(dq_b)
        dk = dk.at[:, :hi].add(dk_b)
        dv = dv.at[:, :hi].add(dv_b)
    return jnp.concatenate(dqs, axis=1), dk.astype(k.dtype), dv.astype(v.dtype), None


_causal_blocks.defvjp(_causal_blocks_fwd, _causal_blocks_bwd)


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
            out = _causal_blocks(q, k, v, segment_ids, chunk_size, scale)
    else:
        raise ValueError(
            f"unknown attention impl {impl!r}; use 'xla', 'chunked' or 'causal_blocks'"
        )
    return out.reshape(b, t, n, h)  # (B, T, N, H)
