r"""Scoring throughput (tokens/s) of glmvoice_jax.inference.scoring on a synthetic GLM checkpoint.

Usage:
    .venv/bin/python bench/score_throughput.py [--size small|1b] [--seq_len 1024] [--num_seqs 64]

Writes a random chatglm checkpoint (size "small": 4 layers, d 512, vocab 32768; "1b": 16 layers,
d 2048, GQA 16/2, F 5632, vocab 151552), imports it, then scores ``num_seqs`` random sequences of
``seq_len`` tokens twice with one Scorer: the first pass includes compilation, the second is the
steady rate reported. Runs on whatever devices JAX sees (CPU or GPU).

Results (2026-11-25, steady pass, float32 math with "highest" matmul precision):
  one H100 80GB (jax 0.11.2): size 1b, seq 2048, 64 seqs: 19,800 tokens/s (chunked attention
  17,900); with the GPU's default TF32 matmuls it was 79,400 tokens/s but log-probs drifted
  by 3e-3, which is why scoring pins "highest".
  2-vCPU development machine: size small, seq 512, 16 seqs, 4096 tokens/batch: 779 tokens/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from glmvoice_jax.convert.glm import chatglm, glm_weights
from glmvoice_jax.inference import scoring
from glmvoice_jax.models import glm

SIZES = {
    "small": glm.GLMConfig(
        vocab_size=32768,
        embed_dim=512,
        num_layers=4,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=1408,
    ),
    "1b": glm.GLMConfig(
        vocab_size=151552,
        embed_dim=2048,
        num_layers=16,
        num_heads=16,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=5632,
    ),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small", choices=sorted(SIZES))
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--num_seqs", type=int, default=64)
    p.add_argument("--max_tokens_per_batch", type=int, default=16384)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--attention_impl", default=None)
    a = p.parse_args()
    cfg = SIZES[a.size]
    work = tempfile.mkdtemp(prefix="score_bench_")
    try:
        src, ck = os.path.join(work, "hf"), os.path.join(work, "ck")
        glm_weights.write_synthetic(src, cfg, chatglm.FORMAT, dtype=a.dtype)
        glm_weights.import_glm(src, ck, chatglm.FORMAT)
        rng = np.random.default_rng(0)
        seqs = [
            rng.integers(0, cfg.vocab_size, a.seq_len).astype(np.int32) for _ in range(a.num_seqs)
        ]
        scorer = scoring.Scorer(
            ck, max_tokens_per_batch=a.max_tokens_per_batch, attention_impl=a.attention_impl
        )
        tokens = a.num_seqs * a.seq_len
        for label in ("first (compile)", "steady"):
            t = time.perf_counter()
            out = scorer.score(seqs)
            secs = time.perf_counter() - t
            assert all(np.isfinite(x).all() for x in out)
            print(
                f"{label}: {tokens} tokens in {secs:.2f} s = {tokens / secs:,.0f} tokens/s "
                f"({a.size}, {cfg.param_count() / 1e6:.0f}M params, seq {a.seq_len}, "
                f"{jax.device_count()} x {jax.devices()[0].device_kind})"
            )
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
