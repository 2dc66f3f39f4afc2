import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import sharding
from glmvoice_jax.models import attention, glm

SMALL = dataclasses.replace(
    glm.VARIANTS["tiny"],
    embed_dim=64,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    mlp_dim=96,
    vocab_size=200,
    init_std=0.1,
)


def _model(cfg):
    return glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))


def _copy(src, cfg):
    dst = _model(cfg)
    nnx.update(dst, nnx.state(src))
    return dst


def test_param_counts_of_presets_are_exact():
    assert glm.VARIANTS["glm4_voice_9b"].param_count() == 9_542_557_696
    assert glm.VARIANTS["glm4_9b"].param_count() == 9_399_951_360
    abstract = nnx.eval_shape(lambda: _model(glm.VARIANTS["glm4_voice_9b"]))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == 9_542_557_696


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes(dtype):
    cfg = dataclasses.replace(SMALL, dtype=dtype)
    m = _model(cfg)
    tokens = jnp.zeros((2, 24), jnp.int32)
    h = m.hidden_states(tokens)
    assert h.shape == (2, 24, 64) and h.dtype == jnp.dtype(dtype)
    logits = m(tokens)
    assert logits.shape == (2, 24, 200) and logits.dtype == jnp.float32
    params = nnx.state(m, nnx.Param)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert nnx.state(m)["layers"]["attn"]["q"]["kernel"][...].shape == (3, 64, 4, 16)


def test_scanned_and_unrolled_give_same_logits():
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 200)
    scanned = _model(dataclasses.replace(SMALL, scan_layers=True, remat_policy="full"))
    unrolled = _copy(scanned, dataclasses.replace(SMALL, scan_layers=False, remat_policy="none"))
    np.testing.assert_allclose(scanned(tokens), unrolled(tokens), atol=1e-5, rtol=1e-5)


def test_chunked_attention_equals_full():
    tokens = jax.random.randint(jax.random.key(2), (2, 64), 0, 200)
    seg = jnp.array([[1] * 20 + [2] * 30 + [3] * 14, [1] * 64])
    full = _model(SMALL)
    chunked = _copy(full, dataclasses.replace(SMALL, attention_impl="chunked", attention_chunk=16))
    np.testing.assert_allclose(full(tokens, seg), chunked(tokens, seg), atol=1e-5, rtol=1e-5)


def test_packed_row_equals_documents_alone():
    """No token attends across a document boundary; rotary positions restart per document."""
    m = _model(SMALL)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 200, n) for n in (11, 17, 6)]
    row = np.concatenate(docs + [np.zeros(6, np.int64)])  # 34 tokens + 6 padding
    seg = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)] + [np.zeros(6)])
    pos = np.concatenate([np.arange(len(d)) for d in docs] + [np.arange(6)])
    packed = m(jnp.array(row[None]), jnp.array(seg[None], jnp.int32), jnp.array(pos[None]))
    start = 0
    for d in docs:
        alone = m(jnp.array(d[None]))
        np.testing.assert_allclose(packed[0, start : start + len(d)], alone[0], atol=2e-5)
        start += len(d)


def test_rotary_backward_is_the_inverse_rotation():
    """apply_rotary's custom backward equals autodiff of the same formula (float32)."""
    cos, sin = glm.rotary_tables(jnp.arange(7)[None] * 3, SMALL)
    x = jax.random.normal(jax.random.key(4), (1, 7, 2, 16))
    g = jax.random.normal(jax.random.key(5), (1, 7, 2, 16))
    _, pull = jax.vjp(lambda x: glm.apply_rotary(x, cos, sin), x)
    _, pull_ref = jax.vjp(lambda x: glm._rotate(x, cos, sin), x)
    np.testing.assert_allclose(pull(g)[0], pull_ref(g)[0], atol=1e-6, rtol=1e-6)


def test_partial_interleaved_rotary_matches_formula():
    cfg = SMALL
    x = jax.random.normal(jax.random.key(3), (1, 5, 2, 16))
    pos = jnp.arange(5)[None]
    cos, sin = glm.rotary_tables(pos, cfg)
    out = np.asarray(glm.apply_rotary(x, cos, sin))
    xn = np.asarray(x)
    theta = 1.0 / 10000 ** (np.arange(0, 8, 2) / 8)
    for p in range(5):
        for i in range(4):
            c, s = np.cos(p * theta[i]), np.sin(p * theta[i])
            a, b = xn[0, p, :, 2 * i], xn[0, p, :, 2 * i + 1]
            np.testing.assert_allclose(out[0, p, :, 2 * i], a * c - b * s, atol=1e-6)
            np.testing.assert_allclose(out[0, p, :, 2 * i + 1], b * c + a * s, atol=1e-6)
    np.testing.assert_array_equal(out[..., 8:], xn[..., 8:])  # second half passes through


def test_padding_rows_stay_finite():
    q = jnp.ones((1, 4, 2, 8))
    k = v = jnp.ones((1, 4, 1, 8))
    seg = jnp.zeros((1, 4), jnp.int32)
    assert np.isfinite(np.asarray(attention.dot_product_attention(q, k, v, seg))).all()


def test_config_validation_errors():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        dataclasses.replace(SMALL, num_heads=5)
    with pytest.raises(ValueError, match="remat_policy"):
        dataclasses.replace(SMALL, remat_policy="sometimes")


def test_kv_cache_decode_equals_full_forward():
    m = _model(SMALL)
    rng = np.random.default_rng(5)
    rows = [rng.integers(0, 200, 19), rng.integers(0, 200, 12)]
    full = [np.asarray(m(jnp.array(r[None]))[0]) for r in rows]
    # Prefill different prompt lengths (7 and 4; the second row is padded), then one token at a
    # time: every step's logits equal the full forward at that position.
    cache = m.init_cache(2, 24)
    prompt = np.zeros((2, 7), np.int64)
    prompt[0], prompt[1, :4] = rows[0][:7], rows[1][:4]
    logits, cache = m.decode(jnp.array(prompt), cache, jnp.array([0, 0], jnp.int32))
    np.testing.assert_allclose(logits[0], full[0][:7], atol=2e-5)
    np.testing.assert_allclose(logits[1, :4], full[1][:4], atol=2e-5)
    index = np.array([7, 4])
    for _ in range(8):
        nxt = np.array([[rows[0][index[0]]], [rows[1][index[1]]]])
        logits, cache = m.decode(jnp.array(nxt), cache, jnp.array(index, jnp.int32))
        for b in range(2):
            np.testing.assert_allclose(logits[b, 0], full[b][index[b]], atol=2e-5)
        index += 1


def test_remat_policies_give_the_same_gradients():
    tokens = jax.random.randint(jax.random.key(2), (2, 32), 0, 200)
    ref = _model(dataclasses.replace(SMALL, remat_policy="none"))

    @nnx.jit
    def grads(m):
        return nnx.grad(lambda m: jnp.mean(m(tokens) ** 2))(m)

    expected = jax.tree.leaves(grads(ref))
    for policy in sorted(set(glm.REMAT_POLICIES) - {"none"}):
        model = _copy(ref, dataclasses.replace(SMALL, remat_policy=policy))
        for a, b in zip(expected, jax.tree.leaves(grads(model)), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=policy)


class _Memory:
    def __init__(self, kind):
        self.kind = kind


class _DeviceWithoutHostMemory:
    platform, device_kind = "gpu", "some accelerator"

    def addressable_memories(self):
        return [_Memory("device")]


def test_offload_policy_needs_pinned_host_memory():
    glm.check_remat_policy("offload", jax.devices())  # CPU: host memory is device memory
    glm.check_remat_policy("full", [_DeviceWithoutHostMemory()])
    with pytest.raises(ValueError, match="pinned host memory.*'dots_no_batch'"):
        glm.check_remat_policy("offload", [_DeviceWithoutHostMemory()])
    with pytest.raises(ValueError, match="unknown remat_policy"):
        glm.check_remat_policy("offload_everything", jax.devices())


def test_hidden_dropout_is_off_without_a_key_and_reproducible_with_one():
    tokens = jax.random.randint(jax.random.key(3), (2, 24), 0, 200)
    plain = _model(SMALL)
    drop = _copy(plain, dataclasses.replace(SMALL, dropout=0.5))
    ref = plain.hidden_states(tokens)
    # No key (eval, scoring, generation) or rate 0: exactly the dropout-free model.
    np.testing.assert_array_equal(drop.hidden_states(tokens), ref)
    np.testing.assert_array_equal(plain.hidden_states(tokens, dropout_key=jax.random.key(0)), ref)
    cache = drop.init_cache(2, 24)
    logits, _ = drop.decode(tokens, cache, jnp.zeros((2,), jnp.int32))
    np.testing.assert_allclose(logits, plain(tokens), atol=1e-5, rtol=1e-5)
    # With a key: active, a function of the key only, and the same scanned or unrolled.
    a = drop.hidden_states(tokens, dropout_key=jax.random.key(7))
    assert not np.allclose(a, ref, atol=1e-3)
    np.testing.assert_array_equal(a, drop.hidden_states(tokens, dropout_key=jax.random.key(7)))
    assert not np.allclose(a, drop.hidden_states(tokens, dropout_key=jax.random.key(8)), atol=1e-3)
    unrolled = _copy(plain, dataclasses.replace(SMALL, dropout=0.5, scan_layers=False))
    np.testing.assert_allclose(
        unrolled.hidden_states(tokens, dropout_key=jax.random.key(7)), a, atol=1e-5, rtol=1e-5
    )


def test_hidden_dropout_rate_scale_and_remat():
    x = jnp.ones((4, 64, 128))
    y = glm.hidden_dropout(x, 0.5, jax.random.key(0))
    assert abs(float(jnp.mean(y == 0)) - 0.5) < 0.02
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}
    # Remat recomputes the same masks: gradients equal those without remat.
    tokens = jax.random.randint(jax.random.key(2), (2, 32), 0, 200)
    ref = _model(dataclasses.replace(SMALL, dropout=0.3, remat_policy="none"))

    @nnx.jit
    def grads(m):
        key = jax.random.key(5)
        return nnx.grad(lambda m: jnp.mean(m.hidden_states(tokens, dropout_key=key) ** 2))(m)

    expected = jax.tree.leaves(grads(ref))
    model = _copy(ref, dataclasses.replace(SMALL, dropout=0.3, remat_policy="full"))
    for a, b in zip(expected, jax.tree.leaves(grads(model)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.e2e  # slow (make test-e2e)
def test_hidden_dropout_is_the_same_on_a_sharded_mesh():
    cfg = dataclasses.replace(SMALL, dropout=0.5)
    tokens = np.asarray(jax.random.randint(jax.random.key(4), (8, 32), 0, 200))
    single = _model(cfg)
    want = single.hidden_states(tokens, dropout_key=jax.random.key(9))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    with sharding.activate(mesh, "fsdp"):
        model = _copy(single, cfg)

        @nnx.jit
        def run(m, tokens, key):
            return m.hidden_states(tokens, dropout_key=key)

        got = run(model, jax.device_put(tokens, sharding.batch_sharding(mesh, "fsdp")),
                  jax.random.key(9))  # fmt: skip
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
