r"""Text-to-token sampling throughput: spans/s and speech tokens/s of SpeechSampler.

Spans are drawn from the bundled sentences (UTF-8 bytes, ``demo`` layout) with Poisson(10)
lengths, as the interleaving job draws them. The first pass (compiles) is excluded.

Usage:
  python bench/sampling.py [--checkpoint runs/demo/sources/t2t] [--spans 512] [--batch 64]
Without --checkpoint a randomly initialised ``tiny`` GLM is used (same cost per token).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glmvoice_jax.data import token_layout  # noqa: E402
from glmvoice_jax.inference import sampling
from glmvoice_jax.workflows import demo_sources  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--spans", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max_len_ratio", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = sampling.SamplingConfig(
        max_len_ratio=args.max_len_ratio, max_len_extra=8, batch_size=args.batch
    )
    if args.checkpoint:
        sampler = sampling.SpeechSampler.from_checkpoint(args.checkpoint, cfg)
    else:
        from flax import nnx

        from glmvoice_jax.models import glm

        model = glm.GLMDecoder(glm.VARIANTS["tiny"], rngs=nnx.Rngs(0))
        sampler = sampling.SpeechSampler(model, token_layout.get("demo"), cfg)
    text = " ".join(demo_sources.read_sentences()).encode()
    rng = np.random.default_rng(0)
    spans = []
    for _ in range(args.spans):
        n = max(1, int(rng.poisson(10)))
        a = int(rng.integers(0, len(text) - n))
        spans.append(np.frombuffer(text[a : a + n], np.uint8))
    print(
        f"load: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; devices {sampler.rows_multiple}"
    )
    t0 = time.perf_counter()
    sampler.sample(spans, list(range(len(spans))))
    print(f"first pass (compiles): {time.perf_counter() - t0:.1f} s")
    for r in range(args.repeats):
        t0 = time.perf_counter()
        out = sampler.sample(spans, [10_000 * (r + 1) + i for i in range(len(spans))])
        secs = time.perf_counter() - t0
        toks = sum(len(o) for o in out)
        print(
            f"{len(spans)} spans in {secs:.2f} s: {len(spans) / secs:,.1f} spans/s, "
            f"{toks / secs:,.0f} speech tokens/s ({toks / len(spans):.1f} tokens/span, batch "
            f"{args.batch})"
        )


if __name__ == "__main__":
    main()
