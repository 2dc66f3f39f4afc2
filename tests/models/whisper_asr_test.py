"""KV-cached greedy decoding equals argmax decoding by repeated full forward passes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models import whisper_asr
from glmvoice_jax.models.whisper_vq import VARIANTS, WhisperVQ

CFG = dataclasses.replace(VARIANTS["tiny"], vocab_size=16, max_target_positions=16)


def _model():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WhisperVQ(CFG, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def draw(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype)
        return jnp.asarray(np.zeros(leaf.shape, leaf.dtype))

    nnx.replace_by_pure_dict(state, jax.tree.map(draw, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def test_cached_greedy_equals_full_forward_argmax():
    model = _model()
    rng = np.random.default_rng(1)
    mel = rng.normal(size=(3, 80, CFG.num_mels)).astype(np.float32)
    mel_mask = np.arange(80)[None, :] < np.array([[80], [50], [30]])
    prefix, eos, new = [1, 5], 2, 8  # eos 2: two rows stop early, one never

    @nnx.jit
    def cached(m, mel, mel_mask):
        enc = m.encoder(mel, mel_mask)
        return whisper_asr.greedy_decode(
            m.decoder, enc.hidden, enc.mask, prefix, max_new_tokens=new, eos_id=eos
        )

    @nnx.jit
    def full(m, mel, mel_mask, tokens):
        enc = m.encoder(mel, mel_mask)
        return m.decoder(tokens, jnp.ones(tokens.shape, bool), enc.hidden, enc.mask)

    tokens, lengths = cached(model, mel, mel_mask)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    seq = np.tile(np.array(prefix + [0] * new, np.int32), (3, 1))
    done = np.zeros(3, bool)
    for t in range(len(prefix), len(prefix) + new):
        logits = np.asarray(full(model, mel, mel_mask, seq))
        pred = logits[:, t - 1].argmax(-1)
        seq[:, t] = np.where(done, eos, pred)
        done |= pred == eos
    np.testing.assert_array_equal(tokens, seq[:, len(prefix) :])
    for row, n in zip(tokens, lengths):
        assert n == (list(row).index(eos) if eos in row else new)
