"""Flow training pieces: padding neutrality of the padded forward, the CFM loss, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from glmvoice_jax.models.speech_decoder import VARIANTS
from glmvoice_jax.models.speech_decoder.flow import Flow
from glmvoice_jax.models.speech_decoder.flow_loss import cfm_loss, sample
from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens

CFG = VARIANTS["tiny"].flow


def _batch(lengths, seed=0):
    """Padded tokens / valid / frame mask / mel for rows of the given token counts."""
    rng = np.random.default_rng(seed)
    n = max(lengths)
    t = frames_from_tokens(n)
    tokens = np.zeros((len(lengths), n), np.int32)
    valid = np.zeros((len(lengths), n), bool)
    fmask = np.zeros((len(lengths), t), np.float32)
    for r, k in enumerate(lengths):
        tokens[r, :k] = rng.integers(0, CFG.vocab_size, k)
        valid[r, :k] = True
        fmask[r, : frames_from_tokens(k)] = 1.0
    mel = rng.normal(size=(len(lengths), t, CFG.output_size)).astype(np.float32) - 5.0
    return jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(fmask), jnp.asarray(mel)


@pytest.mark.e2e  # slow (make test-e2e)
def test_padded_batch_rows_equal_unpadded_inference():
    flow = Flow(CFG, rngs=nnx.Rngs(0))
    lengths = [7, 11]  # odd and even frame counts: 48 and 75 frames
    tokens, valid, fmask, _ = _batch(lengths)
    mel = jax.jit(lambda f, *a: sample(f, *a))(flow, tokens, valid, fmask)
    mu_pad = nnx.jit(lambda f, *a: f.mu_padded(*a))(flow, tokens, valid, fmask[:, :, None])
    infer = nnx.jit(lambda f, x: f.inference(x))  # z = 0, no prompt
    for r, k in enumerate(lengths):
        t = frames_from_tokens(k)
        mu_row = flow.mu(tokens[r : r + 1, :k], t)
        np.testing.assert_allclose(mu_pad[r : r + 1, :t], mu_row, atol=1e-5)
        alone = infer(flow, tokens[r : r + 1, :k])
        np.testing.assert_allclose(mel[r, :t], alone[0], atol=1e-4)
        assert float(jnp.abs(mel[r, t:]).max(initial=0.0)) == 0.0


@pytest.mark.e2e  # ~40 s of compiling on 2 cores; make test runs the trainer's smoke test instead
def test_cfm_loss_is_per_frame_mse_and_training_lowers_it():
    flow = Flow(CFG, rngs=nnx.Rngs(1))
    tokens, valid, fmask, mel = _batch([9, 12, 5], seed=1)
    key = jax.random.key(3)
    loss, aux = cfm_loss(flow, tokens, valid, mel, fmask, key)
    assert np.isfinite(float(loss)) and float(aux["frames"]) == float(fmask.sum())
    assert float(loss) > 0.5  # random targets around -5: far from the untrained velocity

    graphdef, params = nnx.split(flow, nnx.Param)
    rest = nnx.state(flow, nnx.Not(nnx.Param))
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, i):
        def f(p):
            model = nnx.merge(graphdef, p, rest)
            return cfm_loss(model, tokens, valid, mel, fmask, jax.random.fold_in(key, i))[0]

        loss, grads = jax.value_and_grad(f)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    losses = []
    for i in range(20):
        params, opt, value = step(params, opt, i)
        losses.append(float(value))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_dropout_only_with_a_key():
    flow = Flow(CFG, rngs=nnx.Rngs(2))
    tokens, valid, fmask, _ = _batch([10, 6])
    m = fmask[:, :, None]
    mu = nnx.jit(lambda f, *a: f.mu_padded(*a))
    a, b = mu(flow, tokens, valid, m, None), mu(flow, tokens, valid, m, None)
    c = mu(flow, tokens, valid, m, jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-3
