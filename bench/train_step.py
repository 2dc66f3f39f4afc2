"""Train-step throughput, MFU, start-up and peak memory of a GLM train step on this machine.

The step is the trainer's own: ``lm.step_shapes`` + ``lm.jit_train_step`` (in/out shardings and
donation as in glmvoice-train) compiled once by ``loop.compile_step``, so every timed step runs the
same executable (no second compile). The model is issue L's S1, the MaxText reference point
(8 layers, d 512, 8 heads x 64, SwiGLU 1536, vocab 32768, untied, batch 8 x 1024); bench/
maxtext_step.py runs MaxText's trainer on the same model and compares. ``--model 1b`` is a ~1.06B
GLM-4-shaped model (GQA 16 query heads over 2 kv heads of 128, SwiGLU 5632, 18 layers, vocab 65536)
for accelerators, where the attention implementations are compared (docs/attention.md).

Each configuration runs in its own process, so its peak RSS is its own. Per configuration:
  * step_secs: mean over the steps after the first ``--warmup`` timed ones (MaxText's way);
  * startup_secs: from the script's first line (before ``import jax``) to the first step
    dispatched (imports, mesh, init, compile); first_step_done_secs: to its result;
  * mfu: model FLOP/s (GLMConfig.flops_per_token: 6·N·D without the input embedding + causal
    attention, MaxText's count) over the matmul peak measured in the same process after the steps
    (float32: f32 x f32; bf16 compute: bf16 x bf16 -> f32, the rate our bf16 dots run at);
  * peak_rss_gib (ru_maxrss), minor page faults per step; on accelerators the device's peak
    bytes in use (``Device.memory_stats``).

    python bench/train_step.py [--model s1] [--steps 6] [--dtype float32,bfloat16] [--remat none]
        [--attention causal_blocks] [--attention_chunk 256] [--loss_chunk 256] [--out FILE]

Levers (each a comma list; every combination runs): --remat, --attention, --attention_chunk,
--loss_chunk. Not a test: other processes slow it down; the load average is printed.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before jax is imported: start-up counts the imports

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

MODELS = {
    # Issue L's S1, the MaxText reference point: ~61M parameters.
    "s1": dict(
        vocab_size=32768,
        embed_dim=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=8,
        head_dim=64,
        mlp_dim=1536,
    ),
    # ~1.06B, GLM-4's shape scaled down (GQA 8:1, head 128): the accelerator comparison model.
    "1b": dict(
        vocab_size=65536,
        embed_dim=2048,
        num_layers=18,
        num_heads=16,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=5632,
    ),
}


def matmul_peak(dtype: str, n: int = 0, repeats: int = 7) -> float:
    """Median FLOP/s of a jitted n x n matmul, f32 accumulation (n 4096 on CPU, else 8192)."""
    import jax
    import jax.numpy as jnp

    n = n or (4096 if jax.default_backend() == "cpu" else 8192)
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


def step_config(opts: dict):
    """The trainer config of one configuration (what lm.step_shapes and the step read)."""
    import ml_collections as mlc

    return mlc.ConfigDict(
        {
            "seed": 0,
            "total_steps": 1000,
            "axis_rules": "fsdp",
            "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
            "input": {"global_batch_size": opts["batch"], "seq_len": opts["seq"]},
            "optim": dict(
                b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
            ),
            "schedule": dict(decay="cosine", warmup_steps=10, peak_lr=3e-4, end_lr=3e-5),
            "loss": {"chunk_size": opts["loss_chunk"]},
            "metrics": {"on_nonfinite": "raise"},
        }
    )


def run_one(opts: dict) -> dict:
    """One configuration, in this process: compile once, time the steps."""
    import jax
    import numpy as np
    from flax import nnx

    from glmvoice_jax import sharding
    from glmvoice_jax.data import token_layout
    from glmvoice_jax.models import glm
    from glmvoice_jax.trainers import lm, loop

    cfg = glm.GLMConfig(
        **MODELS[opts["model"]],
        dtype=opts["dtype"],
        remat_policy=opts["remat"],
        attention_impl=opts["attention"],
        attention_chunk=opts["attention_chunk"],
    )
    config = step_config(opts)
    layout = dataclasses.replace(token_layout.get("demo"), vocab_size=cfg.vocab_size)
    mesh = sharding.make_mesh(dict(config.mesh))
    shapes = lm.step_shapes(config, mesh, cfg, layout)
    with sharding.activate(mesh, config.axis_rules):
        params = jax.jit(
            lambda: nnx.to_pure_dict(nnx.state(shapes.make_model())), out_shardings=shapes.param_sh
        )()
        train = jax.jit(shapes.init_train, out_shardings=shapes.train_sh)(params)
        rng = np.random.default_rng(0)
        b, t = opts["batch"], opts["seq"]
        batch = {
            "tokens": rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
            "loss_mask": np.ones((b, t), np.int32),
        }
        batch = {k: jax.device_put(v, shapes.batch_sh) for k, v in batch.items()}
        t0 = time.perf_counter()
        step = loop.compile_step(lm.jit_train_step(config, shapes), params, train, batch)
        compile_secs = time.perf_counter() - t0
        startup = time.perf_counter() - T_START
        params, train, out = step(params, train, batch)
        jax.block_until_ready(out["loss"])
        first_done = time.perf_counter() - T_START
        times, faults = [], []
        for _ in range(opts["steps"]):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t1 = time.perf_counter()
            params, train, out = step(params, train, batch)
            jax.block_until_ready(out["loss"])
            times.append(time.perf_counter() - t1)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    timed = times[opts["warmup"] :] or times
    dt = statistics.mean(timed)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU
    device_peak = stats.get("peak_bytes_in_use", 0) / 2**30
    peak_dtype = "float32" if opts["dtype"] == "float32" else opts["dtype"]
    peak = matmul_peak(peak_dtype)
    flops = cfg.flops_per_token(t) * b * t
    return {
        **{
            k: opts[k]
            for k in ("model", "dtype", "remat", "attention", "attention_chunk", "loss_chunk")
        },
        "params": cfg.param_count(),
        "batch": b,
        "seq": t,
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "compile_secs": round(compile_secs, 1),
        "startup_secs": round(startup, 1),
        "first_step_done_secs": round(first_done, 1),
        "step_secs": round(dt, 3),
        "step_secs_all": [round(x, 3) for x in times],
        "tokens_per_sec": round(b * t / dt, 1),
        "model_gflops_per_sec": round(flops / dt / 1e9, 1),
        "peak_matmul_gflops": round(peak / 1e9, 1),
        "mfu_vs_matmul_peak": round(flops / dt / peak, 3),
        "peak_rss_gib": round(peak_rss, 2),
        "device_peak_gib": round(device_peak, 2),
        "minor_faults_per_step": int(statistics.mean(faults[opts["warmup"] :] or faults)),
        "loss": float(out["loss"]),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="s1", choices=sorted(MODELS))
    p.add_argument("--steps", type=int, default=6, help="timed steps after the first")
    p.add_argument("--warmup", type=int, default=1, help="timed steps left out of the mean")
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--remat", default="none")
    p.add_argument("--attention", default="causal_blocks")
    p.add_argument("--attention_chunk", default="256")
    p.add_argument("--loss_chunk", default="256")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--out", default="")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # child: one JSON configuration
    args = p.parse_args()
    if args.one:
        print("ROW " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    env = {
        "machine": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "load_before": os.getloadavg(),
    }
    print(json.dumps(env), flush=True)
    rows = []
    grid = itertools.product(
        args.dtype.split(","),
        args.remat.split(","),
        args.attention.split(","),
        [int(x) for x in args.attention_chunk.split(",")],
        [int(x) for x in args.loss_chunk.split(",")],
    )
    for dtype, remat, attention, achunk, lchunk in grid:
        opts = dict(
            model=args.model,
            dtype=dtype,
            remat=remat,
            attention=attention,
            attention_chunk=achunk,
            loss_chunk=lchunk,
            batch=args.batch,
            seq=args.seq,
            steps=args.steps,
            warmup=args.warmup,
        )
        res = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(opts)],
            capture_output=True,
            text=True,
        )
        line = [x for x in res.stdout.splitlines() if x.startswith("ROW ")]
        if res.returncode or not line:  # recorded, and the other configurations still run
            print(res.stderr[-3000:], file=sys.stderr)
            row = {**opts, "failed": f"exit {res.returncode}: {res.stderr.strip()[-300:]}"}
        else:
            row = json.loads(line[-1][4:])
        row["load_after"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=2)
    failed = [r for r in rows if "failed" in r]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(rows)} configurations failed")


if __name__ == "__main__":
    main()
