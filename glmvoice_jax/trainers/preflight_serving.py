"""Serving pre-flight (``glmvoice-aot --serve``): the generation engine's decode step on a TPU.

The step is ``inference/engine.py``'s compiled decode call (one token for every request of a
batch, ``steps_per_call`` 1, with its sampling filters), built by the engine itself over abstract
parameters placed by the rules table on the topology's devices (``preflight._tpu_devices``) —
the program ``glmvoice-chat`` and the evals run, lowered for the TPU instead of this machine.
XLA's TPU compiler plans every buffer: parameters (bfloat16, or int8 with per-channel scales),
the KV cache [L, B, S, K, H] of ``batch`` requests x ``context`` slots, the logits and the
temporaries.

Reported per chip: that memory against HBM; the largest batch that fits at the context, found
from two compiles (memory grows linearly with the batch: the slope is one request's cache and
activations) and confirmed by a third; and the implied decode rate. A decode step is memory-bound:
it reads every parameter byte and every cache byte once per token, so the step time is taken as
(argument bytes per chip) / (HBM bandwidth x ``bandwidth_fraction``), stated in the report, and
tokens/s = batch / step time. HBM bandwidths are the public per-chip figures (``HBM_BANDWIDTH``).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
from flax import nnx

from glmvoice_jax import config_lib, sharding
from glmvoice_jax.inference import engine as engine_lib
from glmvoice_jax.inference import quantization, token_choice
from glmvoice_jax.models import glm
from glmvoice_jax.trainers import preflight

GIB = preflight.GIB
# Bytes/s of HBM per chip (Cloud TPU system-architecture pages): v4 1.2 TB/s, v5e 819 GB/s,
# v5p 2.76 TB/s, v6e 1.64 TB/s.
HBM_BANDWIDTH = {"v4": 1.2e12, "v5e": 8.19e11, "v5p": 2.765e12, "v6e": 1.64e12}
DEFAULT_BANDWIDTH_FRACTION = 0.7


def _engine(model_cfg: glm.GLMConfig, layout, devices, dtype: str, quantize: str, batch: int,
            context: int, axis_rules: str, mesh_shape: dict):  # fmt: skip
    """An Engine over abstract parameters on ``devices`` (nothing allocated)."""
    config = engine_lib.EngineConfig(
        dtype=dtype, quantize=quantize, axis_rules=axis_rules, mesh=tuple(mesh_shape.items()),
        batch_size=batch, max_context=context, steps_per_call=1,
    )  # fmt: skip
    cfg = engine_lib.Engine._model_config(model_cfg, config)
    mesh = sharding.make_mesh(mesh_shape, devices)
    _, abstract, shardings = sharding.param_shardings(
        lambda: glm.GLMDecoder(cfg, rngs=nnx.Rngs(0)), mesh, axis_rules
    )
    dt = jnp.dtype(dtype)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dt), abstract)
    if quantize == "int8":
        shardings = quantization.quantized_shardings(abstract, shardings)
        abstract = quantization.abstract_quantized(abstract)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)  # fmt: skip
    return engine_lib.Engine(cfg, layout, params, shardings, mesh, config)


def _decode_args(eng: engine_lib.Engine, batch: int, context: int):
    cfg, sh = eng.model_cfg, eng._carry_shardings()
    rows = batch

    def sds(shape, dtype, s):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    cache_shape = (cfg.num_layers, rows, context, cfg.num_kv_heads, cfg.head_dim)
    carry = {
        "cache": {k: sds(cache_shape, jnp.dtype(cfg.dtype), sh["cache"][k]) for k in ("k", "v")},
        "logits": sds((rows, cfg.vocab_size), jnp.float32, sh["logits"]),
        "index": sds((rows,), jnp.int32, sh["index"]),
        "generated": sds((rows,), jnp.int32, sh["generated"]),
        "text_done": sds((rows,), jnp.bool_, sh["text_done"]),
        "done": sds((rows,), jnp.bool_, sh["done"]),
        "stop": sds((rows,), jnp.int32, sh["stop"]),
    }
    row_sh = eng._named(("act_request",))
    dtypes = {"temperature": jnp.float32, "top_p": jnp.float32, "seed": jnp.uint32}
    fields = {}
    for f in dataclasses.fields(token_choice.RowSettings):
        if f.name == "stop_ids":
            fields[f.name] = sds((rows, 4), jnp.int32, eng._named(("act_request", None)))
        else:
            fields[f.name] = sds((rows,), dtypes.get(f.name, jnp.int32), row_sh)
    limits = sds((rows,), jnp.int32, row_sh)
    return eng.params, carry, token_choice.RowSettings(**fields), limits


def _compile(model_cfg, layout, devices, dtype, quantize, batch, context, rules, mesh_shape):
    """(memory report or None when it does not fit, XLA's message, compile seconds)."""
    eng = _engine(model_cfg, layout, devices, dtype, quantize, batch, context, rules, mesh_shape)
    args = _decode_args(eng, batch, context)
    t0 = time.time()
    with sharding.activate(eng.mesh, rules):
        lowered = eng._decode_fn(1, True).lower(*args)
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            return None, str(e).strip().splitlines()[0], time.time() - t0
    return preflight.memory_report(compiled), None, time.time() - t0


def report(
    config,
    topology: str,
    *,
    dtype: str = "bfloat16",
    quantize: str = "none",
    context: int = 8192,
    batch: int = 0,
    axis_rules: str = "fsdp",
    bandwidth_fraction: float = DEFAULT_BANDWIDTH_FRACTION,
) -> dict:
    """Compiles the decode step of ``config``'s model for ``topology``.

    Args:
      config: a training config (its model and token layout are served).
      topology: a TPU slice name (preflight.parse_topology).
      dtype: weights, activations and cache: "bfloat16" or "float32".
      quantize: "none" or "int8" (weight-only).
      context: KV-cache slots per request.
      batch: requests per step; 0 searches the largest that fits.
      axis_rules: rules preset (sharding.py).
      bandwidth_fraction: the fraction of HBM bandwidth the implied decode rate assumes.
    """
    model_cfg, layout = config_lib.model_config(config), config_lib.token_layout_of(config)
    topo = preflight.parse_topology(topology)
    devices = preflight._tpu_devices(topo)
    mesh_shape = {"data": 1, "fsdp": len(devices), "tensor": 1}
    hbm = topo.chip.hbm_bytes
    gen = next(k for k, c in preflight.CHIPS.items() if c is topo.chip)
    rows = sharding.data_parallel_size(sharding.make_mesh(mesh_shape, devices), axis_rules)

    def run(b):
        return _compile(model_cfg, layout, devices, dtype, quantize, b, context, axis_rules,
                        mesh_shape)  # fmt: skip

    compiles = []
    if batch:
        mem, oom, secs = run(batch)
        compiles.append((batch, mem, secs))
    else:  # two points give the bytes per request; the third confirms the predicted largest
        b1, b2 = rows * 8, rows * 16
        m1, oom, s1 = run(b1)
        m2, _, s2 = run(b2) if m1 is not None else (None, None, 0.0)
        compiles += [(b1, m1, s1), (b2, m2, s2)]
        if m1 is not None and m2 is not None:
            per_row = (m2["total"] - m1["total"]) / (b2 - b1)
            fit = b1 + math.floor((hbm - m1["total"]) / per_row) if per_row > 0 else b2
            fit = max(rows, fit // rows * rows)
            mem, oom, secs = run(fit)
            while mem is None or mem["total"] > hbm:  # the prediction was slightly over
                fit -= rows
                if fit < rows:
                    break
                mem, oom, secs = run(fit)
            compiles.append((fit, mem, secs))
            batch = fit
        else:
            batch, mem = b1, m1
    fits = mem is not None and mem["total"] <= hbm
    bw = HBM_BANDWIDTH[gen] * bandwidth_fraction
    step_s = mem["arguments"] / bw if mem is not None else None
    return {
        "topology": topology,
        "chips": topo.num_chips,
        "device_kind": devices[0].device_kind,
        "mesh": mesh_shape,
        "axis_rules": axis_rules,
        "parameters": model_cfg.param_count(),
        "dtype": dtype,
        "quantize": quantize,
        "context": context,
        "batch": batch,
        "memory": mem,
        "oom": oom,
        "hbm_bytes": hbm,
        "fits": fits,
        "compiles": [
            {"batch": b, "total": m["total"] if m else None, "compile_s": round(s, 1)}
            for b, m, s in compiles
        ],  # fmt: skip
        "hbm_bandwidth": HBM_BANDWIDTH[gen],
        "bandwidth_fraction": bandwidth_fraction,
        "implied_step_s": step_s,
        "implied_tokens_per_s": batch / step_s if step_s else None,
        "implied_tokens_per_s_per_request": 1 / step_s if step_s else None,
    }


def format_report(r: dict) -> str:
    def gib(x):
        return f"{x / GIB:.2f} GiB"

    q = "int8 weights" if r["quantize"] == "int8" else f"{r['dtype']} weights"
    lines = [
        f"serve {r['topology']}: {r['chips']} x {r['device_kind']}, mesh {r['mesh']}, {q}, "
        f"{r['parameters']:,} parameters",
        f"decode step: batch {r['batch']} x context {r['context']}",
    ]
    m = r["memory"]
    if m is None:
        lines.append(f"DOES NOT FIT; XLA: {r['oom']}")
        return "\n".join(lines)
    lines.append(
        f"per chip: arguments {gib(m['arguments'])} (weights + KV cache), temps "
        f"{gib(m['temps'])}, total {gib(m['total'])} of {gib(r['hbm_bytes'])} HBM: "
        + ("fits" if r["fits"] else "DOES NOT FIT")
    )
    lines.append(
        f"at {100 * r['bandwidth_fraction']:.0f}% of {r['hbm_bandwidth'] / 1e9:,.0f} GB/s HBM: "
        f"{1e3 * r['implied_step_s']:.1f} ms per step, {r['implied_tokens_per_s']:,.0f} tokens/s "
        f"({r['implied_tokens_per_s_per_request']:.1f} per request)"
    )
    return "\n".join(lines)
