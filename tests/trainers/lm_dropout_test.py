"""The train step's hidden dropout (issue 15): only when model.dropout > 0, keyed by seed + step."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import optim
from glmvoice_jax.data import token_layout
from glmvoice_jax.models import glm
from glmvoice_jax.trainers import lm

CFG = dataclasses.replace(
    glm.VARIANTS["tiny"], embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
    mlp_dim=64, remat_policy="none",
)  # fmt: skip


def _step(dropout: float, accum: int = 1):
    cfg = dataclasses.replace(CFG, dropout=dropout)
    config = mlc.ConfigDict(
        {
            "total_steps": 10,
            "optim": dict(
                b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0,
                grad_accum_steps=accum,
            ),
            "schedule": dict(decay="cosine", warmup_steps=1, peak_lr=1e-3, end_lr=1e-4),
            "loss": dict(chunk_size=16),
            "metrics": dict(on_nonfinite="raise"),
        }
    )  # fmt: skip
    graphdef, state = nnx.split(glm.GLMDecoder(cfg, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    tx = optim.make(config.optim, optim.schedule(config.schedule, 10), params)
    step = jax.jit(lm.make_train_step(graphdef, tx, cfg, token_layout.get("demo"), config))

    def run(seed: int, step_no: int = 0):
        train = {
            "opt": tx.init(params),
            "step": jnp.asarray(step_no, jnp.int32),
            "rng": jax.random.key_data(jax.random.key(seed)),
        }
        rng = np.random.default_rng(0)
        batch = {
            "tokens": jnp.asarray(rng.integers(0, 1024, (4, 32)), jnp.int32),
            "segment_ids": jnp.ones((4, 32), jnp.int32),
            "positions": jnp.broadcast_to(jnp.arange(32, dtype=jnp.int32), (4, 32)),
            "loss_mask": jnp.ones((4, 32), jnp.int32),
        }
        return float(step(params, train, batch)[2]["loss"])

    return run


@pytest.mark.parametrize("accum", [1, pytest.param(2, marks=pytest.mark.e2e)])
def test_dropout_is_reproducible_under_the_seed_and_varies_by_step(accum):
    off, on = _step(0.0, accum), _step(0.5, accum)
    assert off(0) == off(1) == off(0, step_no=3)  # rate 0: the key is never used
    assert on(0) == on(0)
    assert on(0) != on(1) and on(0) != on(0, step_no=3)
    assert on(0) != off(0)
