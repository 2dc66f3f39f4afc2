"""Greedy ASR decoding of the Whisper decoder with a KV cache (held-out WER/CER, transcription).

One token per step inside a ``jax.lax.while_loop``: the token embedding plus its learned position
goes through every decoder layer (``DecoderLayer.cached``), whose self-attention keys/values are
written into a preallocated cache at the step's position; the encoder's cross-attention
keys/values are projected once, before the loop. The prefix (e.g. Whisper's
<|startoftranscript|><|en|><|transcribe|><|notimestamps|>, or a sentencepiece BOS) is fed
teacher-forced; afterwards the argmax is fed back until every row has produced ``eos_id`` or
``max_new_tokens`` are out. The result equals argmax decoding by repeated full forward passes
(tests/models/whisper_decoding_test.py).

Axes: B batch, U decoder positions (cache length), E encoder frames, D embed, N heads, H head dim,
V vocab.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from glmvoice_jax.models.whisper_vq import WhisperDecoder


def greedy_decode(
    decoder: WhisperDecoder,
    encoded: jax.Array,
    encoded_mask: jax.Array,
    prefix: Sequence[int],
    *,
    max_new_tokens: int,
    eos_id: int,
) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding after a fixed prefix.

    Args:
      decoder: the Whisper decoder.
      encoded: [B, E, D] encoder output.
      encoded_mask: [B, E] valid encoder frames.
      prefix: token ids fed before the first prediction (at least one).
      max_new_tokens: tokens predicted after the prefix (len(prefix) + max_new_tokens must fit
        the decoder's ``max_target_positions``).
      eos_id: end-of-text id; a row stops after predicting it (and then repeats it).

    Returns:
      (tokens [B, max_new_tokens] int32, lengths [B] int32): the predictions, and how many of
      them precede the first eos (all of them when a row never produced eos).

    Raises:
      ValueError: empty prefix, or prefix + max_new_tokens beyond max_target_positions.
    """
    cfg = decoder.config
    p = len(prefix)
    total = p + max_new_tokens
    if p < 1:
        raise ValueError("greedy_decode needs a prefix of at least one token (the start token)")
    if total > cfg.max_target_positions:
        raise ValueError(
            f"prefix ({p}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the decoder's "
            f"max_target_positions ({cfg.max_target_positions}); lower max_new_tokens"
        )
    b = encoded.shape[0]
    dtype = jnp.dtype(cfg.dtype)
    n = cfg.num_decoder_heads
    h = cfg.embed_dim // n
    encoded = encoded.astype(dtype)
    cross_kv = [layer.encoder_attn.keys_values(encoded) for layer in decoder.layers]
    cross_mask = encoded_mask.astype(bool)[:, None, :]  # (B, 1, E)
    cache = [
        (jnp.zeros((b, total, n, h), dtype), jnp.zeros((b, total, n, h), dtype))
        for _ in decoder.layers
    ]
    buf = jnp.zeros((b, total), jnp.int32).at[:, :p].set(jnp.asarray(np.asarray(prefix), jnp.int32))
    emb = decoder.embed_tokens[...]
    positions = decoder.embed_positions[...]

    def cond(carry):
        t, _, _, done = carry
        return (t < total - 1) & ~jnp.all(done & (t + 1 >= p))

    def body(carry):
        t, buf, cache, done = carry
        tok = jax.lax.dynamic_slice_in_dim(buf, t, 1, axis=1)  # (B, 1)
        x = jnp.take(emb, tok, axis=0) + jax.lax.dynamic_slice_in_dim(positions, t, 1)[None]
        x = x.astype(dtype)  # (B, 1, D)
        self_mask = jnp.broadcast_to((jnp.arange(total) <= t)[None, None, :], (b, 1, total))
        new_cache = []
        for layer, kv, c in zip(decoder.layers, cross_kv, cache):
            x, c = layer.cached(x, c, t, self_mask, kv, cross_mask)
            new_cache.append(c)
        x = decoder.layer_norm(x)[:, 0]  # (B, D)
        logits = jnp.einsum("BD,VD->BV", x, emb.astype(dtype), preferred_element_type=jnp.float32)
        pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # (B,)
        forced = t + 1 < p
        prefix_next = jax.lax.dynamic_index_in_dim(buf, jnp.minimum(t + 1, total - 1), 1, False)
        nxt = jnp.where(forced, prefix_next, jnp.where(done, eos_id, pred))
        done = done | (~forced & (nxt == eos_id))
        buf = jax.lax.dynamic_update_slice_in_dim(buf, nxt[:, None], t + 1, axis=1)
        return t + 1, buf, new_cache, done

    init = (jnp.zeros((), jnp.int32), buf, cache, jnp.zeros((b,), bool))
    t_end, buf, _, _ = jax.lax.while_loop(cond, body, init)
    out = buf[:, p:]  # (B, max_new_tokens)
    # Positions never reached (all rows finished early) hold 0; mark them eos.
    reached = jnp.arange(max_new_tokens)[None, :] < (t_end + 1 - p)
    out = jnp.where(reached, out, eos_id)
    is_eos = out == eos_id
    lengths = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), max_new_tokens)
    return out, lengths.astype(jnp.int32)
