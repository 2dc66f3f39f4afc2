"""Fused attention (splash, cuDNN) against the xla path: same numbers, same packing semantics.

Splash runs in Pallas interpret mode on CPU. cuDNN runs only on a GPU: off-GPU its argument
plumbing is checked through jax's reference implementation and its refusal is tested; on a GPU
(``ON_GPU``; bench/gpu_check.sh runs them on the device machine) the kernel itself is checked in
bf16 against float32 math, beside our own bf16 ``xla`` path.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import config_lib, sharding
from glmvoice_jax.models import attention, fused_attention, glm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# float32 tolerances (measured max abs error: forward 8e-7, gradients 9e-6).
FWD_TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)

ON_GPU = jax.default_backend() == "gpu"
gpu_only = pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs a GPU")


def _packed_batch(b=2, t=256, n=4, kh=2, h=32, seed=0):
    """q, k, v and segment ids with several documents per row and trailing padding (0)."""
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (b, t, n, h))
    k = jax.random.normal(ks[1], (b, t, kh, h))
    v = jax.random.normal(ks[2], (b, t, kh, h))
    seg = np.zeros((b, t), np.int32)
    rng = np.random.default_rng(seed)
    for r in range(b):
        cuts = np.sort(rng.choice(np.arange(1, t - 8), size=3, replace=False))
        bounds = [0, *cuts, t - 5 * r]  # row r ends with 5 * r padding tokens
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            seg[r, lo:hi] = i + 1
    return q, k, v, jnp.asarray(seg)


def _loss_and_grads(fn, q, k, v):
    return jax.jit(jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=(0, 1, 2)))(
        q, k, v
    )


def _xla(seg):
    return lambda q, k, v: attention.dot_product_attention(q, k, v, seg, impl="xla")


def _splash(seg):
    return lambda q, k, v: fused_attention.splash_attention(q, k, v, seg, interpret=True)


def test_splash_matches_xla_on_packed_rows():
    q, k, v, seg = _packed_batch()
    np.testing.assert_allclose(_splash(seg)(q, k, v), _xla(seg)(q, k, v), **FWD_TOL)
    (_, want), (_, got) = (
        _loss_and_grads(_xla(seg), q, k, v),
        _loss_and_grads(_splash(seg), q, k, v),
    )
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **GRAD_TOL)


@pytest.mark.parametrize(
    "tensor,heads",
    [(2, 4), pytest.param(4, 4, marks=pytest.mark.e2e), pytest.param(2, 8, marks=pytest.mark.e2e)],
)
def test_splash_under_the_mesh_shards_batch_and_heads(tensor, heads):
    """shard_map over act_batch / act_heads; kv heads stay whole (a slice per query shard)."""
    q, k, v, seg = _packed_batch(b=8 // tensor, t=128, n=heads, h=16, seed=1)
    want = _loss_and_grads(_xla(seg), q, k, v)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": tensor})
    with sharding.activate(mesh, "fsdp_tp"):
        got = _loss_and_grads(_splash(seg), q, k, v)
    np.testing.assert_allclose(got[0], want[0], **FWD_TOL)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, **GRAD_TOL)


def test_splash_and_cudnn_refuse_a_cpu_backend():
    q, k, v, seg = _packed_batch(b=1, t=128)
    with pytest.raises(ValueError, match="'splash' needs a TPU backend .* 'cpu' devices"):
        fused_attention.splash_attention(q, k, v, seg)
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    with pytest.raises(ValueError, match="'cudnn' needs a GPU backend .* 'cpu' devices"):
        fused_attention.cudnn_attention(*bf, seg)
    with pytest.raises(ValueError, match="multiple of 128, got 96"):
        fused_attention.splash_attention(
            q[:, :96], k[:, :96], v[:, :96], seg[:, :96], interpret=True
        )


def test_cudnn_arguments_reproduce_the_xla_path():
    """The mask + is_causal + scale handed to cuDNN, run by jax's reference implementation."""
    q, k, v, seg = _packed_batch(t=64)
    kw = fused_attention.cudnn_arguments(q, seg)
    causal = jnp.tril(jnp.ones((64, 64), bool))
    np.testing.assert_array_equal(kw["mask"][:, 0] & causal, attention.packed_causal_mask(seg, seg))

    def cudnn_plumbing(q, k, v):
        return fused_attention.cudnn_attention(q, k, v, seg, implementation="xla")

    want, got = _loss_and_grads(_xla(seg), q, k, v), _loss_and_grads(cudnn_plumbing, q, k, v)
    np.testing.assert_allclose(got[0], want[0], **FWD_TOL)
    for g, w in zip(got[1], want[1]):
        np.testing.assert_allclose(g, w, **GRAD_TOL)


def test_model_with_fused_attention_refuses_cpu_and_bad_values():
    small = dataclasses.replace(
        glm.VARIANTS["tiny"], num_layers=1, vocab_size=64, embed_dim=32, mlp_dim=64, head_dim=8
    )
    splash_cfg = dataclasses.replace(small, attention_impl="splash")

    def forward():  # abstract: the error comes from tracing, nothing is allocated or compiled
        return glm.GLMDecoder(splash_cfg, rngs=nnx.Rngs(0))(jnp.zeros((1, 128), jnp.int32))

    with pytest.raises(ValueError, match="attention_impl='splash' needs a TPU backend"):
        jax.eval_shape(forward)
    with pytest.raises(ValueError, match=r"model.attention_impl must be one of .*'flash'"):
        dataclasses.replace(small, attention_impl="flash")
    with pytest.raises(ValueError, match="'cudnn' needs model.dtype bfloat16 or float16"):
        dataclasses.replace(small, attention_impl="cudnn")
    dataclasses.replace(small, attention_impl="cudnn", dtype="bfloat16")  # valid off-GPU too


def test_config_validation_of_splash_sequence_length():
    c = config_lib.load_config_file(os.path.join(REPO, "configs/demo_tiny.py:corpus=synthetic"))
    c.model.attention_impl = "splash"
    if c.input.seq_len % 128:
        with pytest.raises(ValueError, match="needs input.seq_len to be a multiple of 128"):
            config_lib.validate(c)
    c.input.seq_len = 200
    with pytest.raises(ValueError, match="needs input.seq_len to be a multiple of 128, got 200"):
        config_lib.validate(c)


@pytest.mark.e2e
def _packed_rows(t: int, vocab: int):
    """Two rows of 3 contiguous documents of t/4 tokens, then t/4 padding; positions restart."""
    tokens = jax.random.randint(jax.random.key(3), (2, t), 0, vocab)
    seg = jnp.asarray(np.repeat([[1, 2, 3, 0]], t // 4, axis=1).repeat(2, axis=0), jnp.int32)
    seg = jnp.sort(jnp.where(seg == 0, 9, seg), axis=1) % 9  # contiguous docs, padding last
    pos = jnp.broadcast_to(jnp.arange(t) % (t // 4), (2, t))
    return tokens, seg, pos


def test_decoder_with_splash_matches_xla(monkeypatch):
    """The whole decoder (packed row, rotary, scan + remat) with splash in interpret mode."""
    monkeypatch.setattr(
        fused_attention,
        "splash_attention",
        lambda *a, _f=fused_attention.splash_attention: _f(*a, interpret=True),
    )
    cfg = dataclasses.replace(glm.VARIANTS["tiny"], num_layers=2, init_std=0.1)
    ref = glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))
    fused = glm.GLMDecoder(dataclasses.replace(cfg, attention_impl="splash"), rngs=nnx.Rngs(0))
    tokens, seg, pos = _packed_rows(128, cfg.vocab_size)
    np.testing.assert_allclose(fused(tokens, seg, pos), ref(tokens, seg, pos), **FWD_TOL)


def _bf16_bound(err_xla: float, ref) -> float:
    """What cuDNN's bf16 error may be: twice our own bf16 path's, or one bf16 ulp of the largest
    reference value, whichever is larger (bf16 keeps 8 significant bits)."""
    return max(2.0 * err_xla, 2.0**-7 * float(jnp.max(jnp.abs(ref))))


@gpu_only
def test_cudnn_matches_float32_math_as_closely_as_our_bf16_path():
    """bf16 inputs, packed rows with padding, GQA 8:2; the cuDNN fused kernel must be in the HLO."""
    q, k, v, seg = _packed_batch(b=2, t=512, n=8, kh=2, h=64, seed=2)
    bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    exact = [x.astype(jnp.float32) for x in bf]  # the same inputs, float32 math

    def cudnn(q, k, v):
        return fused_attention.cudnn_attention(q, k, v, seg)

    hlo = jax.jit(cudnn).lower(*bf).compile().as_text()
    assert "__cudnn$fmha" in hlo, "no cuDNN fused attention call in the compiled step"
    ref_out = _xla(seg)(*exact)
    ref = _loss_and_grads(_xla(seg), *exact)
    ours, got = _loss_and_grads(_xla(seg), *bf), _loss_and_grads(cudnn, *bf)
    report = {}
    pairs = [("out", ref_out, _xla(seg)(*bf), cudnn(*bf))]
    pairs += [(f"d{n}", r, o, g) for n, r, o, g in zip("qkv", ref[1], ours[1], got[1])]
    for name, r, o, g in pairs:
        err_xla = float(jnp.max(jnp.abs(o.astype(jnp.float32) - r)))
        err_cudnn = float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)))
        report[name] = (err_cudnn, err_xla, _bf16_bound(err_xla, r))
    print("max abs error vs float32 math (cudnn, xla bf16, bound):", report)
    for name, (err_cudnn, _, bound) in report.items():
        assert err_cudnn <= bound, (name, report[name])


@gpu_only
def test_decoder_with_cudnn_matches_xla_in_bf16():
    """The whole decoder (packed rows, rotary restarting per document, scan + remat) in bf16."""
    cfg = dataclasses.replace(
        glm.VARIANTS["tiny"], num_layers=2, init_std=0.1, dtype="bfloat16", head_dim=64
    )
    exact = glm.GLMDecoder(dataclasses.replace(cfg, dtype="float32"), rngs=nnx.Rngs(0))
    ours = glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))
    fused = glm.GLMDecoder(dataclasses.replace(cfg, attention_impl="cudnn"), rngs=nnx.Rngs(0))
    tokens, seg, pos = _packed_rows(256, cfg.vocab_size)
    ref = exact(tokens, seg, pos).astype(jnp.float32)
    err_xla = float(jnp.max(jnp.abs(ours(tokens, seg, pos).astype(jnp.float32) - ref)))
    err_cudnn = float(jnp.max(jnp.abs(fused(tokens, seg, pos).astype(jnp.float32) - ref)))
    print(f"decoder logits max abs error vs float32: cudnn {err_cudnn:.3g}, xla bf16 {err_xla:.3g}")
    assert err_cudnn <= _bf16_bound(err_xla, ref)
