import dataclasses

import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from glmvoice_jax import sharding
from glmvoice_jax.models import glm

CFG = dataclasses.replace(glm.VARIANTS["tiny"], num_layers=2)

EXPECTED = {
    "fsdp": {
        "embed/embedding": P(None, "fsdp"),
        "head/kernel": P("fsdp", None),
        "final_norm/scale": P(None),
        "layers/attn/q/kernel": P(None, "fsdp", None, None),
        "layers/attn/q/bias": P(None, None, None),
        "layers/attn/k/kernel": P(None, "fsdp", None, None),
        "layers/attn/out/kernel": P(None, None, None, "fsdp"),
        "layers/mlp/gate/kernel": P(None, "fsdp", None),
        "layers/mlp/down/kernel": P(None, None, "fsdp"),
        "layers/attn_norm/scale": P(None, None),
    },
    "fsdp_tp": {
        "embed/embedding": P("tensor", "fsdp"),
        "head/kernel": P("fsdp", "tensor"),
        "layers/attn/q/kernel": P(None, "fsdp", "tensor", None),
        "layers/attn/q/bias": P(None, "tensor", None),
        "layers/attn/k/kernel": P(None, "fsdp", None, None),  # 2 kv heads: replicated over tensor
        "layers/attn/out/kernel": P(None, "tensor", None, "fsdp"),
        "layers/mlp/gate/kernel": P(None, "fsdp", "tensor"),
        "layers/mlp/up/kernel": P(None, "fsdp", "tensor"),
        "layers/mlp/down/kernel": P(None, "tensor", "fsdp"),
    },
}


def _get(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


@pytest.mark.parametrize("preset", ["fsdp", "fsdp_tp"])
def test_param_shardings_follow_rules_on_2x2x2(preset):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, params, _ = sharding.init_params(lambda: glm.GLMDecoder(CFG, rngs=nnx.Rngs(0)), mesh, preset)
    for path, spec in EXPECTED[preset].items():
        arr = _get(params, path)
        assert arr.sharding.spec == spec, path
        assert arr.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
    # Every kernel is sharded on the fsdp axis: no parameter-sized replica on one device.
    q = _get(params, "layers/attn/q/kernel")
    assert q.addressable_shards[0].data.shape[1] == CFG.embed_dim // 2


def test_mesh_errors_name_values_and_fix():
    with pytest.raises(ValueError, match="needs 6 devices but 8 are available"):
        sharding.resolve_mesh_shape({"data": 2, "fsdp": 3, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        sharding.resolve_mesh_shape({"data": 3, "fsdp": -1, "tensor": 1}, 8)
    assert sharding.resolve_mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="unknown axis_rules preset"):
        sharding.rules("zero3")


def test_shard_shape_and_batch_sharding():
    assert sharding.shard_shape((10, 8), P("fsdp", None), {"fsdp": 4}) == (3, 8)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    assert sharding.batch_sharding(mesh, "fsdp").spec == P(("data", "fsdp"), None)
    assert sharding.data_parallel_size(mesh, "fsdp") == 8
