"""trainers/preflight_serving: the engine's decode step lowered over abstract parameters."""

import dataclasses

import jax
import numpy as np
from flax import nnx

from glmvoice_jax import sharding
from glmvoice_jax.data import token_layout
from glmvoice_jax.inference import quantization
from glmvoice_jax.models import glm
from glmvoice_jax.trainers import preflight_serving

CFG = dataclasses.replace(glm.VARIANTS["tiny"], num_layers=2, remat_policy="none")
MESH = {"data": 1, "fsdp": 8, "tensor": 1}


def test_abstract_int8_tree_matches_the_real_quantisation():
    mesh = sharding.make_mesh(MESH)
    _, _, shardings = sharding.param_shardings(
        lambda: glm.GLMDecoder(CFG, rngs=nnx.Rngs(0)), mesh, "fsdp"
    )
    params = jax.jit(
        lambda: nnx.to_pure_dict(nnx.state(glm.GLMDecoder(CFG, rngs=nnx.Rngs(0)))),
        out_shardings=shardings,
    )()
    real, real_sh = quantization.quantize(params, shardings, "int8")
    abstract = quantization.abstract_quantized(jax.eval_shape(lambda: params))
    shape = lambda t: [(x.shape, np.dtype(x.dtype)) for x in jax.tree.leaves(t)]  # noqa: E731
    assert shape(real) == shape(abstract)
    want = quantization.quantized_shardings(params, shardings)
    assert jax.tree.leaves(want) == jax.tree.leaves(real_sh)


def test_decode_step_compiles_and_grows_with_the_batch(quantize="int8"):
    layout = token_layout.get("demo")
    small, oom, _ = preflight_serving._compile(
        CFG, layout, jax.devices(), "bfloat16", quantize, 8, 256, "fsdp", MESH
    )
    large, _, _ = preflight_serving._compile(
        CFG, layout, jax.devices(), "bfloat16", quantize, 16, 256, "fsdp", MESH
    )
    assert oom is None and small["arguments"] > 0
    # Eight more requests add their KV cache: L x 8 x 256 x K x H x 2 (k, v) x 2 bytes / 8 devices.
    cache = CFG.num_layers * 8 * 256 * CFG.num_kv_heads * CFG.head_dim * 2 * 2 / 8
    assert large["arguments"] - small["arguments"] >= cache
