"""Next-token cross-entropy over packed rows, in float32, with per-modality sums.

At 9B scale a float32 [B, T, 168960] logits tensor is 5.5 GB per 8k-token row, so the head matmul
and the log-softmax run over sequence chunks under ``jax.checkpoint``: only one [B, chunk, V] block
is live in the forward pass and it is recomputed in the backward pass.

Targets: ``targets[t] = tokens[t + 1]``, counted when the record's loss_mask marks tokens[t + 1] as
a target and tokens[t + 1] belongs to the same document as tokens[t] (glm4voice.md §7.3: ASR/TTS
samples predict only their target part). A target id in the speech range of the token layout
counts towards ``speech_loss``, every other target towards ``text_loss``.

Axes: B batch, T length, C chunk, D embed, V vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glmvoice_jax.models import matmul

SUM_KEYS = ("loss_sum", "count", "speech_sum", "speech_count")


def shift_targets(
    tokens: jax.Array, segment_ids: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(targets [B, T], weights [B, T] float32): the next token and whether it is counted."""
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    nxt_seg = jnp.concatenate([segment_ids[:, 1:], jnp.zeros_like(segment_ids[:, :1])], axis=1)
    nxt_mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    valid = (nxt_seg == segment_ids) & (segment_ids > 0) & (nxt_mask > 0)
    return targets, valid.astype(jnp.float32)


def chunked_xent_sums(
    hidden: jax.Array,
    head_kernel: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    is_speech: jax.Array,
    *,
    chunk_size: int,
) -> dict[str, jax.Array]:
    """Sums of the float32 cross-entropy, split by modality, without materialising all logits.

    Args:
      hidden: [B, T, D] final hidden states (compute dtype).
      head_kernel: [D, V] output head.
      targets: [B, T] next-token ids.
      weights: [B, T] float32 per-target weights (0 or 1).
      is_speech: [B, T] bool, target is a speech token.
      chunk_size: sequence chunk; must divide T (the whole row when T <= chunk_size).

    Returns:
      dict of float32 scalars: loss_sum, count, speech_sum, speech_count (text = the rest).
    """
    b, t, d = hidden.shape
    c = min(chunk_size, t)
    if t % c:
        raise ValueError(f"loss chunk_size ({chunk_size}) must divide the sequence length ({t})")
    n = t // c
    w_kernel = head_kernel.astype(hidden.dtype)

    @jax.checkpoint
    def chunk(h, tgt, w, sp):
        logits = matmul.einsum("BCD,DV->BCV", h, w_kernel, out_dtype=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)  # (B, C)
        tgt_logit = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
        nll = (lse - tgt_logit) * w
        spw = w * sp
        return jnp.stack([nll.sum(), w.sum(), (nll * sp).sum(), spw.sum()])

    def split(x):
        return x.reshape(b, n, c, *x.shape[2:]).swapaxes(0, 1)  # (N, B, C, ...)

    sums = jax.lax.map(
        lambda a: chunk(*a),
        (split(hidden), split(targets), split(weights), split(is_speech.astype(jnp.float32))),
    ).sum(axis=0)
    return {
        "loss_sum": sums[0],
        "count": sums[1],
        "speech_sum": sums[2],
        "speech_count": sums[3],
    }


def summarize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Mean losses from sums: loss, text_loss, speech_loss (0 where a modality is absent)."""
    text_sum = sums["loss_sum"] - sums["speech_sum"]
    text_count = sums["count"] - sums["speech_count"]
    return {
        "loss": sums["loss_sum"] / jnp.maximum(sums["count"], 1.0),
        "text_loss": text_sum / jnp.maximum(text_count, 1.0),
        "speech_loss": sums["speech_sum"] / jnp.maximum(sums["speech_count"], 1.0),
        "tokens_counted": sums["count"],
        "speech_tokens_counted": sums["speech_count"],
    }
