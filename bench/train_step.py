"""Train-step throughput and MFU of a ~61M-parameter GLM at seq 1024 on this machine.

The practical peak is measured in the same process: the median FLOP/s of a jitted 4096 x 4096
matmul (float32, and bf16 with float32 accumulation). MFU = model FLOP/s (GLMConfig.
flops_per_token: 6·N·D + causal attention) / that peak. The model shape is the MaxText reference
point of jax_stack_notes.md (8 layers, d 512, 8 heads x 64, SwiGLU 1536, vocab 32768, untied,
batch 8 x 1024), so the figures compare directly.

    python bench/train_step.py [--steps 10] [--dtype float32,bfloat16] [--remat none]
Writes a JSON line per configuration to stdout and, with --out, to a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from glmvoice_jax import optim, sharding
from glmvoice_jax.data import token_layout
from glmvoice_jax.models import glm
from glmvoice_jax.trainers import lm

MODEL = glm.GLMConfig(
    vocab_size=32768,
    embed_dim=512,
    num_layers=8,
    num_heads=8,
    num_kv_heads=8,
    head_dim=64,
    mlp_dim=1536,
)


def matmul_peak(dtype: str, n: int = 4096, repeats: int = 7) -> float:
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def bench_step(dtype: str, remat: str, steps: int, batch_size: int, seq: int) -> dict:
    cfg = dataclasses.replace(MODEL, dtype=dtype, remat_policy=remat)
    config = mlc.ConfigDict(
        {
            "total_steps": 1000,
            "optim": dict(
                b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
            ),
            "schedule": dict(decay="cosine", warmup_steps=10, peak_lr=3e-4, end_lr=3e-5),
            "loss": dict(chunk_size=seq),
            "metrics": dict(on_nonfinite="raise"),
        }
    )
    layout = dataclasses.replace(token_layout.get("demo"), vocab_size=cfg.vocab_size)
    mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})

    def make():
        return glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))

    graphdef, params, _ = sharding.init_params(make, mesh, "fsdp")
    tx = optim.make(config.optim, optim.schedule(config.schedule, 1000), params)
    train = {
        "opt": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jnp.zeros(2, jnp.uint32),
    }
    step = jax.jit(lm.make_train_step(graphdef, tx, cfg, layout, config), donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    batch = {
        "tokens": jnp.asarray(rng.integers(0, cfg.vocab_size, (batch_size, seq)), jnp.int32),
        "segment_ids": jnp.ones((batch_size, seq), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch_size, seq)),
        "loss_mask": jnp.ones((batch_size, seq), jnp.int32),
    }
    with sharding.activate(mesh, "fsdp"):
        t0 = time.perf_counter()
        params, train, out = step(params, train, batch)
        jax.block_until_ready(out["loss"])
        compile_secs = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            params, train, out = step(params, train, batch)
            jax.block_until_ready(out["loss"])
            times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    flops = cfg.flops_per_token(seq) * batch_size * seq
    return {
        "dtype": dtype,
        "remat": remat,
        "params": cfg.param_count(),
        "batch": batch_size,
        "seq": seq,
        "compile_secs": round(compile_secs, 1),
        "step_secs": round(dt, 3),
        "tokens_per_sec": round(batch_size * seq / dt, 1),
        "model_flops_per_sec": flops / dt,
        "loss": float(out["loss"]),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--remat", default="none")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--out", default="")
    args = p.parse_args()
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    env = {
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s)",
        "jax": jax.__version__,
        "peak_matmul_flops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
    }
    print(json.dumps(env))
    rows = []
    for dtype in args.dtype.split(","):
        for remat in args.remat.split(","):
            r = bench_step(dtype, remat, args.steps, args.batch, args.seq)
            r["mfu_vs_matmul_peak"] = round(r["model_flops_per_sec"] / peaks[dtype], 3)
            r["model_gflops_per_sec"] = round(r.pop("model_flops_per_sec") / 1e9, 1)
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
