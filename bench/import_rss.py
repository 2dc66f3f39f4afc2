r"""Peak host memory of glmvoice-import on a synthetic multi-GB GLM checkpoint.

Usage:
    .venv/bin/python bench/import_rss.py [--workdir /tmp/import_rss] [--layers 12] [--keep]

Writes a random chatglm-layout checkpoint (bf16, GLM-4 vocab 151552, d 2048, GQA 16/2, F 5632,
12 layers: 2.3 GB, largest tensor 0.62 GB = the embedding / output layer), then runs
``python -m glmvoice_jax.cli.import_checkpoint`` on it in a child process and reports the
child's peak RSS (ru_maxrss), next to the peak RSS of a child that only imports the same modules.
Goal: peak <= 1 GB + largest tensor. The import is then checked by exporting it back
(glmvoice-export, also measured) and comparing every tensor bit for bit.

Result (2026-11-25, the 2-vCPU development machine, 1 CPU device): 2.30 GB checkpoint, largest
tensor 0.62 GB; baseline 0.26 GB; import 22.5 s, peak RSS 0.83 GB (goal 1.62 GB); export
31 s, peak RSS 0.64 GB; round trip bit-identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from glmvoice_jax.convert.glm import chatglm, glm_weights
from glmvoice_jax.convert.io import safetensors_dir
from glmvoice_jax.models import glm

GB = 1e9


def child(args: list[str]) -> tuple[float, float]:
    """Runs a Python child; returns (seconds, the child's own peak RSS in bytes)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], env={**os.environ, "JAX_PLATFORMS": "cpu"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{args} exited with {proc.returncode}")
    return time.perf_counter() - t, usage.ru_maxrss * 1024.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/import_rss")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--keep", action="store_true", help="keep the workdir")
    p.add_argument("--reuse", action="store_true", help="reuse a kept synthetic checkpoint")
    a = p.parse_args()
    src, ck, back = (os.path.join(a.workdir, n) for n in ("hf", "ck", "back"))
    if not (a.reuse and os.path.exists(os.path.join(src, "config.json"))):
        shutil.rmtree(a.workdir, ignore_errors=True)
        os.makedirs(a.workdir)
    for d in (ck, back):
        shutil.rmtree(d, ignore_errors=True)
    cfg = glm.GLMConfig(
        vocab_size=151552,
        embed_dim=2048,
        num_layers=a.layers,
        num_heads=16,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=5632,
    )
    t = time.perf_counter()
    if not os.path.exists(src):
        glm_weights.write_synthetic(
            src, cfg, chatglm.FORMAT, dtype="bfloat16", max_shard_bytes=10**9
        )
    st = safetensors_dir.SafetensorsDir(src)
    sizes = {k: int(np.prod(st.shape(k))) * st.dtype(k).itemsize for k in st.keys()}  # noqa: SIM118
    total, largest = sum(sizes.values()), max(sizes.values())
    print(
        f"synthetic checkpoint: {total / GB:.2f} GB in {len(sizes)} tensors, largest "
        f"{largest / GB:.2f} GB ({time.perf_counter() - t:.0f} s to write)"
    )

    code = "import glmvoice_jax.cli.import_checkpoint, jax; jax.numpy.zeros(1).block_until_ready()"
    _, base = child(["-c", code])
    print(f"baseline (imports only): peak RSS {base / GB:.2f} GB")
    secs, peak = child(
        ["-m", "glmvoice_jax.cli.import_checkpoint", "--checkpoint", src, "--output", ck]
    )
    print(
        f"import: {secs:.1f} s, peak RSS {peak / GB:.2f} GB "
        f"(goal <= 1 GB + largest = {(GB + largest) / GB:.2f} GB): "
        f"{'OK' if peak <= GB + largest else 'OVER'}"
    )
    secs, peak_e = child(
        ["-m", "glmvoice_jax.cli.export_checkpoint", "--checkpoint", ck, "--output", back]
    )
    print(f"export: {secs:.1f} s, peak RSS {peak_e / GB:.2f} GB")
    a_st, b_st = safetensors_dir.SafetensorsDir(src), safetensors_dir.SafetensorsDir(back)
    assert sorted(a_st.keys()) == sorted(b_st.keys())
    for k in a_st.keys():  # noqa: SIM118
        assert a_st.read(k).tobytes() == b_st.read(k).tobytes(), k
    print("round trip: all tensors bit-identical")
    if not a.keep:
        shutil.rmtree(a.workdir)


if __name__ == "__main__":
    main()
