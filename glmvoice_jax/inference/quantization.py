"""Int8 weight-only quantisation of GLM parameters for generation.

Each matrix of the GLM (embedding, q/k/v/out projections, the SwiGLU matrices and the output
head) is stored as int8 values with one float32 scale per output channel: symmetric,
``scale = max |w| / 127`` over the contracted axes, ``q = round(w / scale)``. Norm scales and
biases stay in the compute dtype. Weights are dequantised layer by layer inside the decode step
(``dequantize``), so HBM holds one byte per weight: the 9B model's 9.5 G weights take 9.5 GB
instead of 19 GB in bfloat16, and a memory-bound decode step reads half the bytes.

The logit distance to bfloat16 is measured in tests/inference/engine_test.py.

Leaves are addressed by their path in the ``nnx.to_pure_dict`` tree of ``GLMDecoder``; layer
leaves carry the leading ``layers`` axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

MODES = ("none", "int8")

# Path in the parameter tree -> axes reduced for the per-channel scale (the contracted axes; for
# the embedding, which is gathered, the embed axis: one scale per row).
QUANTIZED_AXES: dict[tuple[str, ...], tuple[int, ...]] = {
    ("embed", "embedding"): (1,),  # [V, D]
    ("layers", "attn", "q", "kernel"): (1,),  # [L, D, N, H]
    ("layers", "attn", "k", "kernel"): (1,),  # [L, D, K, H]
    ("layers", "attn", "v", "kernel"): (1,),  # [L, D, K, H]
    ("layers", "attn", "out", "kernel"): (1, 2),  # [L, N, H, D]
    ("layers", "mlp", "gate", "kernel"): (1,),  # [L, D, F]
    ("layers", "mlp", "up", "kernel"): (1,),  # [L, D, F]
    ("layers", "mlp", "down", "kernel"): (1,),  # [L, F, D]
    ("head", "kernel"): (0,),  # [D, V]
}


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """int8 values and float32 per-channel scales (size 1 on the reduced axes)."""

    q: jax.Array
    scale: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    def dequantize(self, dtype) -> jax.Array:
        return (self.q.astype(jnp.float32) * self.scale).astype(dtype)


jax.tree_util.register_dataclass(QuantizedArray, data_fields=["q", "scale"], meta_fields=[])


def _path(key_path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in key_path)


def _quantize_leaf(w: jax.Array, axes: tuple[int, ...]) -> QuantizedArray:
    w32 = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=axes, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w32 / scale), -127, 127).astype(jnp.int8)
    return QuantizedArray(q, scale)


def quantize(params: Any, shardings: Any, mode: str) -> tuple[Any, Any]:
    """Quantises a GLM parameter tree in place of its matrices, keeping the shardings.

    Args:
      params: ``nnx.to_pure_dict`` tree of a GLMDecoder, placed with ``shardings``.
      shardings: matching tree of NamedShardings.
      mode: one of ``MODES``; "none" returns the inputs.

    Returns:
      (params, shardings) where quantised leaves are ``QuantizedArray``: the values keep the
      weight's sharding, the scales the same spec with their reduced axes unsharded.

    Raises:
      ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"quantize must be one of {MODES}, not {mode!r}")
    if mode == "none":
        return params, shardings
    out_shardings = quantized_shardings(params, shardings)

    def run(tree):
        def leaf(key_path, w):
            axes = QUANTIZED_AXES.get(_path(key_path))
            return w if axes is None else _quantize_leaf(w, axes)

        return jax.tree_util.tree_map_with_path(leaf, tree)

    return jax.jit(run, out_shardings=out_shardings, donate_argnums=0)(params), out_shardings


def quantized_shardings(params: Any, shardings: Any) -> Any:
    """The shardings of ``quantize``'s output: values as the weight, scales unsharded where reduced.

    ``params`` may be abstract (shapes only): the AOT pre-flight uses it without any weights.
    """

    def leaf_sharding(key_path, sharding, w):
        axes = QUANTIZED_AXES.get(_path(key_path))
        if axes is None:
            return sharding
        spec = list(sharding.spec) + [None] * (len(w.shape) - len(sharding.spec))
        for a in axes:
            spec[a] = None
        return QuantizedArray(sharding, NamedSharding(sharding.mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map_with_path(leaf_sharding, shardings, params)


def abstract_quantized(params: Any) -> Any:
    """Shapes and dtypes of ``quantize(params, ..., "int8")`` without computing it."""

    def leaf(key_path, w):
        axes = QUANTIZED_AXES.get(_path(key_path))
        if axes is None:
            return w
        scale = tuple(1 if i in axes else n for i, n in enumerate(w.shape))
        return QuantizedArray(
            jax.ShapeDtypeStruct(w.shape, jnp.int8), jax.ShapeDtypeStruct(scale, jnp.float32)
        )

    return jax.tree_util.tree_map_with_path(leaf, params)


def dequantize(tree: Any, dtype) -> Any:
    """The tree with every ``QuantizedArray`` turned back into a ``dtype`` array."""
    return jax.tree.map(
        lambda x: x.dequantize(dtype) if isinstance(x, QuantizedArray) else x,
        tree,
        is_leaf=lambda x: isinstance(x, QuantizedArray),
    )


def take_rows(table: jax.Array | QuantizedArray, ids: jax.Array, dtype) -> jax.Array:
    """``table[ids]`` in ``dtype``; a quantised table is dequantised for the gathered rows only."""
    if isinstance(table, QuantizedArray):
        rows = jnp.take(table.q, ids, axis=0).astype(jnp.float32)
        return (rows * jnp.take(table.scale, ids, axis=0)).astype(dtype)
    return jnp.take(table, ids, axis=0).astype(dtype)


def nbytes(params: Any) -> int:
    """Bytes of a (possibly quantised) parameter tree."""
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
