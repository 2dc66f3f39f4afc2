"""Einsum with float32 accumulation for low-precision compute, forward and backward.

Why: with ``model.dtype = bfloat16`` a plain ``jnp.einsum`` of two bf16 operands returns bf16,
and XLA:CPU runs that at its float32 rate; bf16 inputs with a float32 accumulator
(``preferred_element_type``) run at about twice that rate (issue L: 155 vs 317 GFLOP/s on the
project's 2-core EPYC). TPUs and GPUs accumulate bf16 matmuls in float32 anyway, so asking for it
costs nothing there and gives the cast back to bf16 one rounding instead of many.

Autodiff alone would lose the gain in the backward pass: the transpose of a dot with a float32
result takes a float32 cotangent, and a float32 x bf16 dot runs at the float32 rate. So the
low-precision path is a ``jax.custom_vjp`` whose backward casts the cotangent to the operands'
dtype and runs both transposed dots bf16 x bf16 -> float32 as well (the usual mixed-precision
rule: Micikevicius et al. 2018; flash-attention kernels treat dS the same way).

In float32 the function is exactly ``jnp.einsum`` (the parity tests' path is unchanged).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def einsum(spec: str, a: jax.Array, b: jax.Array, *, out_dtype=None) -> jax.Array:
    """``jnp.einsum(spec, a, b)`` accumulated in float32, the result in ``out_dtype``.

    Args:
      spec: a two-operand einsum with an explicit output (``"BTD,DF->BTF"``); every index of an
        operand appears in the other operand or in the output (no operand-only sums).
      a: the first operand, in the compute dtype.
      b: the second operand, in the same dtype as ``a``.
      out_dtype: the result's dtype; default the operands' dtype.
    """
    out_dtype = jnp.dtype(out_dtype or a.dtype)
    if a.dtype == jnp.float32 and b.dtype == jnp.float32:
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)
    return _lowp_einsum(spec, out_dtype, a, b)


def _specs(spec: str) -> tuple[str, str, str]:
    ins, out = spec.replace(" ", "").split("->")
    sa, sb = ins.split(",")
    for s, other in ((sa, sb), (sb, sa)):
        if set(s) - set(other) - set(out):
            raise ValueError(f"einsum {spec!r}: an operand-only summed index has no transpose")
    return sa, sb, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _lowp_einsum(spec, out_dtype, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _lowp_fwd(spec, out_dtype, a, b):
    return _lowp_einsum(spec, out_dtype, a, b), (a, b)


def _lowp_bwd(spec, out_dtype, res, g):
    a, b = res
    sa, sb, out = _specs(spec)
    g = g.astype(a.dtype)
    da = jnp.einsum(f"{out},{sb}->{sa}", g, b, preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{sa},{out}->{sb}", a, g, preferred_element_type=jnp.float32)
    return da.astype(a.dtype), db.astype(b.dtype)


_lowp_einsum.defvjp(_lowp_fwd, _lowp_bwd)
