"""Our train step beside MaxText's on the same model, interleaved in one window, with the ratio.

MaxText (PyPI ``maxtext``, needs Python 3.12) lives in its own environment; this script only
starts processes. Each round runs, per dtype, our bench/train_step.py and then MaxText's trainer
(``python -m maxtext.trainers.pre_train.train``) on issue L's S1 model (8 layers, d 512, 8 heads
x 64, MLP 1536, vocab 32768, untied, seq 1024, batch 8), synthetic data, ``hardware=cpu``,
checkpointing off, ``jax_cache_dir=`` empty (no compilation cache for either), MaxText's defaults
otherwise (full remat, its attention autoselection).

Step time, both: the mean over steps >= 3 (0 compiles; MaxText logs each step's wall time
between dispatches, which settles after two steps). MFU, both: our model FLOPs per step
(GLMConfig.flops_per_token, MaxText's count: 6·N·D without the input embedding + causal
attention) over the matmul peak our process measured in the same round (float32 x float32, or
bf16 x bf16 -> float32). Start-up: process start to the first step's result (MaxText: its
"completed step: 0" line, which it prints once step 0's loss is on the host). Peak RSS: each
process' own (ours from its ru_maxrss; MaxText's from wait4).

    python bench/maxtext_step.py --maxtext_python /path/to/py312-venv/bin/python \
        [--ours_python PY] [--dtype float32,bfloat16] [--rounds 2] [--steps 5] [--out FILE]

Setup of the MaxText environment (Python 3.12; jax as in our env for a same-jax comparison):
    python3.12 -m venv mtvenv && mtvenv/bin/pip install 'maxtext[tpu]==0.2.5' 'jax==0.12.0.1'
Not a test: run it on a quiet machine (the load average is printed with every row).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

S1_MAXTEXT = [
    "dataset_type=synthetic",
    "hardware=cpu",
    "skip_jax_distributed_system=True",
    "per_device_batch_size=8",
    "max_target_length=1024",
    "base_emb_dim=512",
    "base_num_query_heads=8",
    "base_num_kv_heads=8",
    "head_dim=64",
    "base_mlp_dim=1536",
    "base_num_decoder_layers=8",
    "vocab_size=32768",
    "logits_via_embedding=False",
    "enable_checkpointing=False",
    "jax_cache_dir=",
]
_STEP = re.compile(r"completed step: (\d+), seconds: ([0-9.]+)")
_PARAMS = re.compile(r"number parameters: ([0-9.]+) billion")


def run_ours(python: str, dtype: str, steps: int, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [python, os.path.join(HERE, "train_step.py"), "--dtype", dtype]
        cmd += ["--steps", str(steps - 1), "--warmup", "2", "--out", out.name, *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out.name) as f:
            return json.load(f)["rows"][0]


def run_maxtext(python: str, dtype: str, steps: int, workdir: str) -> dict:
    """MaxText's trainer in a child process; its log parsed for step times."""
    base = subprocess.run(
        [python, "-c", "import maxtext, os; print(os.path.dirname(maxtext.__file__))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    run_name = f"s1_{dtype}_{int(time.time())}"
    cmd = [python, "-m", "maxtext.trainers.pre_train.train", f"{base}/configs/base.yml"]
    cmd += [f"run_name={run_name}", f"base_output_directory={workdir}", f"steps={steps}"]
    cmd += [f"dtype={dtype}", *S1_MAXTEXT]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    first_done, secs, params, tail = None, {}, None, []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if m := _STEP.search(line):
            secs[int(m.group(1))] = float(m.group(2))
            if first_done is None:
                first_done = time.perf_counter() - t0
        elif m := _PARAMS.search(line):
            params = float(m.group(1))
    _, status, usage = os.wait4(proc.pid, 0)
    if status or len(secs) < steps:
        sys.stderr.write("".join(tail))
        raise SystemExit(f"MaxText run failed (status {status}, {len(secs)} of {steps} steps)")
    timed = [secs[k] for k in sorted(secs) if k >= 3]
    step = statistics.mean(timed)
    return {
        "step_secs": round(step, 3),
        "step_secs_all": [secs[k] for k in sorted(secs)],
        "tokens_per_sec": round(8 * 1024 / step, 1),
        "first_step_done_secs": round(first_done, 1),
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "params_billion": params,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--maxtext_python", default=os.environ.get("MAXTEXT_PYTHON", ""))
    p.add_argument("--ours_python", default=sys.executable)
    p.add_argument("--dtype", default="float32,bfloat16")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="steps per run, 0 included (>= 4)")
    p.add_argument("--ours_args", default="", help="extra bench/train_step.py flags")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if not args.maxtext_python or not os.path.exists(args.maxtext_python):
        raise SystemExit(
            "give --maxtext_python (or $MAXTEXT_PYTHON): the python of an environment with "
            "maxtext installed (see this script's docstring)"
        )
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for r in range(args.rounds):
            for dtype in args.dtype.split(","):
                load0 = os.getloadavg()[0]
                ours = run_ours(args.ours_python, dtype, args.steps, args.ours_args.split())
                mt = run_maxtext(args.maxtext_python, dtype, args.steps, workdir)
                flops = ours["model_gflops_per_sec"] * ours["step_secs"]  # GFLOP per step
                row = {
                    "round": r,
                    "dtype": dtype,
                    "ours": ours,
                    "maxtext": mt,
                    "maxtext_mfu": round(flops / mt["step_secs"] / ours["peak_matmul_gflops"], 3),
                    "ratio_tokens_per_sec": round(mt["step_secs"] / ours["step_secs"], 3),
                    "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
