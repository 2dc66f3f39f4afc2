"""VectorQuantizer: nearest code, EMA math, Laplace smoothing, restarts, straight-through, masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax.models import vq


def _state(rng, c=6, d=4):
    codebook = rng.normal(size=(c, d)).astype(np.float32)
    count = rng.uniform(0.5, 2.0, size=(c,)).astype(np.float32)
    weight = (codebook * count[:, None]).astype(np.float32)
    return vq.VQState(jnp.asarray(codebook), jnp.asarray(count), jnp.asarray(weight))


def test_nearest_codes_is_squared_l2_argmin():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    codebook = rng.normal(size=(7, 4)).astype(np.float32)
    ids, q = vq.nearest_codes(jnp.asarray(x), jnp.asarray(codebook))
    dist = ((x[..., None, :] - codebook) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(ids), dist.argmin(-1))
    np.testing.assert_array_equal(np.asarray(q), codebook[dist.argmin(-1)])


def test_ema_update_matches_formula_and_ignores_masked_frames():
    rng = np.random.default_rng(1)
    state = _state(rng)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    ids = rng.integers(0, 6, size=(2, 5))
    mask = np.ones((2, 5), bool)
    mask[1, 3:] = False
    d, eps, c = 0.9, 1e-5, 6
    update = jax.jit(lambda s, x, i, m: vq.ema_update(s, x, i, m, decay=d))
    new, n = update(state, jnp.asarray(x), jnp.asarray(ids), jnp.asarray(mask))

    onehot = np.eye(c)[ids.reshape(-1)] * mask.reshape(-1, 1)
    n_ref = onehot.sum(0)
    dw = onehot.T @ x.reshape(-1, 4)
    count = d * np.asarray(state.ema_count) + (1 - d) * n_ref
    total = count.sum()
    count = (count + eps) / (total + c * eps) * total  # Laplace smoothing keeps the total
    weight = d * np.asarray(state.ema_weight) + (1 - d) * dw
    np.testing.assert_allclose(np.asarray(n), n_ref)
    np.testing.assert_allclose(np.asarray(new.ema_count), count, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.ema_count).sum(), total, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new.ema_weight), weight, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(new.codebook), weight / count[:, None], rtol=1e-5)

    # Changing masked frames (values and ids) changes nothing.
    x2, ids2 = x.copy(), ids.copy()
    x2[1, 3:] = 1e6
    ids2[1, 3:] = 0
    new2, _ = update(state, jnp.asarray(x2), jnp.asarray(ids2), jnp.asarray(mask))
    for a, b in zip(new, new2, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_laplace_smoothing_keeps_unused_codes_positive():
    state = vq.VQState(jnp.ones((4, 2)), jnp.array([5.0, 0.0, 0.0, 3.0]), jnp.ones((4, 2)))
    new, _ = vq.ema_update(
        state, jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,)), decay=0.5
    )
    count = np.asarray(new.ema_count)
    assert np.all(count > 0) and np.all(np.isfinite(np.asarray(new.codebook)))
    np.testing.assert_allclose(count.sum(), 4.0, rtol=1e-6)  # 0.5 * 8, total preserved
    np.testing.assert_allclose(count[1], (0 + 1e-5) / (4 + 4e-5) * 4, rtol=1e-5)


def test_restart_replaces_only_dead_codes_with_distinct_valid_frames():
    c, d = 8, 3
    codebook = jnp.arange(c * d, dtype=jnp.float32).reshape(c, d)
    count = jnp.array([2.0, 0.1, 3.0, 0.2, 1.0, 0.0, 5.0, 0.3])  # dead (< 0.5): 1, 3, 5, 7
    state = vq.VQState(codebook, count, codebook * 2)
    x = 1000.0 + jnp.arange(2 * 6 * d, dtype=jnp.float32).reshape(2, 6, d)
    mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], bool)
    restart = jax.jit(lambda s, x, m, k: vq.restart_dead_codes(s, x, m, k, threshold=0.5))
    new, restarted = restart(state, x, mask, jax.random.key(3))
    dead = np.array([1, 3, 5, 7])
    alive = np.setdiff1d(np.arange(c), dead)
    assert int(restarted) == 4
    valid_rows = np.asarray(x)[np.asarray(mask)]
    picked = np.asarray(new.codebook)[dead]
    rows = [int(np.flatnonzero((valid_rows == p).all(1))[0]) for p in picked]  # each a valid frame
    assert len(set(rows)) == 4  # without replacement
    np.testing.assert_array_equal(np.asarray(new.ema_count)[dead], 1.0)
    np.testing.assert_array_equal(np.asarray(new.ema_weight)[dead], picked)
    np.testing.assert_array_equal(np.asarray(new.codebook)[alive], np.asarray(codebook)[alive])
    np.testing.assert_array_equal(np.asarray(new.ema_count)[alive], np.asarray(count)[alive])
    # Other keys pick other frames; more dead codes than valid frames restarts only as many.
    few = jnp.array([[1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], bool)
    new_few, restarted_few = restart(state, x, few, jax.random.key(4))
    assert int(restarted_few) == 2
    np.testing.assert_array_equal(
        np.asarray(new_few.codebook)[[5, 7]], np.asarray(codebook)[[5, 7]]
    )


def test_statistics_over_an_axis_name_equal_the_global_batch():
    """psum inside vmap/shard_map over two data shards == one call on the whole batch."""
    rng = np.random.default_rng(5)
    state = _state(rng, c=6, d=4)
    state = state._replace(ema_count=state.ema_count.at[2].set(0.01))
    x = jnp.asarray(rng.normal(size=(4, 5, 4)).astype(np.float32))
    ids = jnp.asarray(rng.integers(0, 6, size=(4, 5)))
    mask = jnp.asarray(rng.uniform(size=(4, 5)) > 0.3)
    key = jax.random.key(7)

    @jax.jit
    def whole(x, ids, mask):
        upd, _ = vq.ema_update(state, x, ids, mask, decay=0.9)
        rst, _ = vq.restart_dead_codes(state, x, mask, key, threshold=0.5)
        return upd, rst

    ref, ref_restart = whole(x, ids, mask)

    def shard(a):
        return a.reshape((2, a.shape[0] // 2) + a.shape[1:])

    def per_shard(xs, idss, ms):
        upd, _ = vq.ema_update(state, xs, idss, ms, decay=0.9, axis_name="data")
        rst, _ = vq.restart_dead_codes(state, xs, ms, key, threshold=0.5, axis_name="data")
        return upd, rst

    upd, rst = jax.jit(jax.vmap(per_shard, axis_name="data"))(shard(x), shard(ids), shard(mask))
    for a, b in zip(ref, upd, strict=True):
        np.testing.assert_allclose(np.asarray(b)[0], np.asarray(a), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(b)[1], np.asarray(a), rtol=1e-6)
    for a, b in zip(ref_restart, rst, strict=True):
        np.testing.assert_array_equal(np.asarray(b)[0], np.asarray(a))


def test_masked_mse_averages_dims_then_valid_frames():
    a = jnp.array([[[1.0, 3.0], [2.0, 2.0], [9.0, 9.0]]])
    b = jnp.zeros_like(a)
    mask = jnp.array([[1, 1, 0]])
    np.testing.assert_allclose(float(vq.masked_mse(a, b, mask)), ((1 + 9) / 2 + 4) / 2)


def _quantizer(**kw):
    return vq.VectorQuantizer(8, 4, rngs=nnx.Rngs(0), **kw)


def test_straight_through_gradient_and_commitment_loss():
    q = _quantizer(restart_interval=None, loss_scale=10.0, commit_coef=0.25)
    x = jax.random.normal(jax.random.key(1), (2, 3, 4))
    mask = jnp.array([[1, 1, 1], [1, 0, 0]], bool)
    codebook = q.codebook[...]

    def f(model, x):
        out, _, aux = model(x, mask, train=True)
        return jnp.sum(out * jnp.arange(4.0)), (out, aux)

    # The EMA update mutates the module, so differentiate through nnx (state propagates).
    grad, (out, aux) = nnx.jit(nnx.grad(f, argnums=1, has_aux=True))(q, x)
    assert int(q.ema_steps[...]) == 1
    np.testing.assert_allclose(np.asarray(grad), np.broadcast_to(np.arange(4.0), x.shape))
    ids, quantized = vq.nearest_codes(x, codebook)
    np.testing.assert_allclose(np.asarray(out), np.asarray(quantized), atol=1e-6)
    expected = 10.0 * 0.25 * float(vq.masked_mse(x, quantized, mask))
    np.testing.assert_allclose(float(aux["vq_loss"]), expected, rtol=1e-6)
    # Inference returns q itself and no loss.
    out_inf, ids_inf, aux_inf = q(x, mask)
    assert float(aux_inf["vq_loss"]) == 0.0
    assert out_inf.shape == x.shape and ids_inf.shape == (2, 3)


def test_module_updates_ema_in_place_and_restarts_on_schedule():
    q = _quantizer(ema_decay=0.5, restart_interval=2)
    q.ema_count[...] = jnp.full((8,), 0.01)  # unused codes fall below 0.5**2 within two steps
    x = jax.random.normal(jax.random.key(2), (1, 6, 4))
    mask = jnp.ones((1, 6), bool)
    before = q.get_state()
    call = nnx.jit(lambda model, key: model(x, mask, train=True, restart_key=key)[2])
    aux1 = call(q, jax.random.key(0))
    assert int(q.ema_steps[...]) == 1 and int(aux1["codes_restarted"]) == 0
    assert not np.allclose(np.asarray(q.ema_count[...]), np.asarray(before.ema_count))
    aux2 = call(q, jax.random.key(0))
    assert int(q.ema_steps[...]) == 2
    dead_before = int(aux2["codes_restarted"])
    assert dead_before > 0
    restarted_rows = np.asarray(q.codebook[...])
    frames = np.asarray(x)[0]
    matches = [(frames == row).all(1).any() for row in restarted_rows]
    assert sum(matches) >= dead_before
    with pytest.raises(ValueError, match="restart_key"):
        q(x, mask, train=True)


def test_gradient_mode_codebook_is_a_param_with_both_loss_terms():
    q = _quantizer(ema_decay=None)
    assert isinstance(q.codebook, nnx.Param)
    x = jax.random.normal(jax.random.key(3), (1, 5, 4))
    mask = jnp.ones((1, 5), bool)

    def loss(model):
        return model(x, mask, train=True)[2]["vq_loss"]

    grads = nnx.jit(nnx.grad(loss))(q)
    assert float(jnp.abs(grads["codebook"][...]).sum()) > 0
