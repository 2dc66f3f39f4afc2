import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from glmvoice_jax.models import attention, matmul


def _dots(jaxpr):
    """Every dot_general equation in a (closed) jaxpr, sub-jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(eqn)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out.extend(_dots(sub))
    return out


@pytest.mark.parametrize(
    "spec,sa,sb",
    [("BTD,DKH->BTKH", (2, 5, 8), (8, 3, 4)), ("BKGTS,BSKH->BTKGH", (2, 3, 2, 5, 6), (2, 6, 3, 4))],
)
def test_bf16_grads_are_float32_math_with_bf16_roundings_and_dots_accumulate_in_f32(spec, sa, sb):
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, sa)
    b = jax.random.normal(kb, sb)

    def loss(a, b, dtype):
        y = matmul.einsum(spec, a.astype(dtype), b.astype(dtype))
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    g16 = jax.grad(loss, argnums=(0, 1))(a, b, jnp.bfloat16)
    # The same math in float32 with the three bf16 roundings the low-precision path makes (its
    # output, the cotangent, each gradient): equal up to one bf16 ulp (f32 summation order).
    bf = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    ins, out = spec.split("->")
    sa_, sb_ = ins.split(",")
    ar, br = bf(a), bf(b)
    g = bf(jnp.cos(bf(jnp.einsum(spec, ar, br))))
    want = (
        bf(jnp.einsum(f"{out},{sb_}->{sa_}", g, br)),
        bf(jnp.einsum(f"{sa_},{out}->{sb_}", ar, g)),
    )
    for got, ref in zip(g16, want):
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=2**-7, atol=1e-6)
    # The point of the module: forward and both backward dots are bf16 x bf16 -> float32.
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(a, b, jnp.bfloat16)
    dots = _dots(jaxpr.jaxpr)
    assert len(dots) == 3
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert eqn.params["preferred_element_type"] == jnp.float32


def test_float32_is_plain_einsum():
    a = jax.random.normal(jax.random.key(1), (3, 4))
    b = jax.random.normal(jax.random.key(2), (4, 5))
    np.testing.assert_array_equal(matmul.einsum("ab,bc->ac", a, b), jnp.einsum("ab,bc->ac", a, b))


def test_operand_only_index_is_refused_in_backward():
    a = jnp.ones((3, 4), jnp.bfloat16)
    b = jnp.ones((4, 5), jnp.bfloat16)
    with pytest.raises(ValueError, match="operand-only"):
        jax.grad(lambda a: matmul.einsum("ab,bc->c", a, b).astype(jnp.float32).sum())(a)


@pytest.mark.parametrize("impl", ["chunked", "causal_blocks"])
def test_causal_block_attention_matches_full_in_values_and_grads(impl):
    """Query blocks (causal_blocks: skipping blocks above the diagonal, with its own flash
    backward pass); outputs and gradients are those of the one-tensor path."""
    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(kq, (2, 48, 4, 8))
    k = jax.random.normal(kk, (2, 48, 2, 8))
    v = jax.random.normal(kv, (2, 48, 2, 8))
    seg = jnp.array([[1] * 10 + [2] * 30 + [0] * 8, [1] * 48])

    def f(impl):
        def loss(q, k, v):
            o = attention.dot_product_attention(q, k, v, seg, impl=impl, chunk_size=16)
            return jnp.sum(o * jnp.cos(o)), o

        return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    (l_full, o_full), g_full = f("xla")
    (l_chunk, o_chunk), g_chunk = f(impl)
    np.testing.assert_allclose(o_chunk, o_full, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_chunk, g_full):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_causal_blocks_backward_in_bf16_is_as_close_to_float32_as_autodiff():
    """The flash backward of causal_blocks: every dot bf16 x bf16 -> float32, and its bf16
    gradients no further from float32 math than autodiff's through the one-tensor path."""
    ks = jax.random.split(jax.random.key(5), 3)
    shapes = [(2, 64, 4, 16), (2, 64, 2, 16), (2, 64, 2, 16)]  # q, k, v: 4 query heads on 2 kv
    q, k, v = (jax.random.normal(kx, shape) for kx, shape in zip(ks, shapes))
    seg = jnp.array([[1] * 20 + [2] * 36 + [0] * 8, [1] * 64])

    def grads(impl, dtype):
        def loss(q, k, v):
            o = attention.dot_product_attention(q, k, v, seg, impl=impl, chunk_size=16)
            return jnp.sum(jnp.sin(o.astype(jnp.float32)))

        args = [x.astype(dtype) for x in (q, k, v)]
        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(*args)
        return jax.grad(loss, argnums=(0, 1, 2))(*args), _dots(jaxpr.jaxpr)

    bf = [x.astype(jnp.bfloat16).astype(jnp.float32) for x in (q, k, v)]
    q, k, v = bf  # float32 math on the same (bf16-representable) inputs
    exact, _ = grads("xla", jnp.float32)
    autodiff, _ = grads("xla", jnp.bfloat16)
    flash, dots = grads("causal_blocks", jnp.bfloat16)
    assert len(dots) == 4 * 2 + 4 * 5  # 4 blocks: 2 forward, 5 backward (the forward recomputed)
    for eqn in dots:
        assert [x.aval.dtype for x in eqn.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert eqn.params["preferred_element_type"] == jnp.float32
    for got, ref, want in zip(flash, autodiff, exact):
        err = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)))
        err_autodiff = float(jnp.max(jnp.abs(ref.astype(jnp.float32) - want)))
        assert err <= err_autodiff * 1.25 + 2**-8 * float(jnp.max(jnp.abs(want))), (
            err,
            err_autodiff,
        )
