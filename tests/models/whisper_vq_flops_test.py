"""WhisperVQConfig.train_flops (the tokenizer trainer's MFU) against XLA's own count."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from glmvoice_jax.models import whisper_vq


@pytest.mark.e2e  # compiles a gradient: ~10 s quiet, a minute under load
def test_train_flops_matches_xla_cost_analysis_of_the_gradient():
    cfg = whisper_vq.WhisperVQConfig(
        num_mels=80, embed_dim=128, num_heads=4, mlp_dim=512, num_layers=2,
        max_source_positions=200, pooling_kernel=4, pooling_position=1, quantize_position=1,
        codebook_size=256, vocab_size=500, num_decoder_layers=1, num_decoder_heads=4,
        decoder_mlp_dim=512, max_target_positions=32, restart_interval=None,
        attention_block_size=None,
    )  # fmt: skip
    graphdef, state = nnx.split(whisper_vq.WhisperVQ(cfg, rngs=nnx.Rngs(0)))
    b, frames, dec_len = 2, 400, 16
    mel, mel_mask = jnp.zeros((b, frames, 80)), jnp.ones((b, frames), bool)
    tokens, token_mask = jnp.zeros((b, dec_len), jnp.int32), jnp.ones((b, dec_len), bool)

    def loss(state):
        logits, enc = nnx.merge(graphdef, state)(mel, mel_mask, tokens, token_mask, train=True)
        return jnp.sum(jnp.sin(logits)) + jnp.sum(enc.aux["vq_loss"])

    cost = jax.jit(jax.grad(loss, allow_int=True)).lower(state).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    ours = cfg.train_flops(b, frames, dec_len)
    # Ours counts matmuls only; XLA adds the elementwise work (a few % at these widths).
    assert 0.85 < ours / cost["flops"] < 1.02, (ours, cost["flops"])
