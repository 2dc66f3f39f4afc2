r"""Input pipeline throughput per process: pre-tokenized shards -> mix -> pack -> batches.

Writes (once) a synthetic four-kind corpus in the GLM-4-Voice layout with the record templates of
glmvoice_jax/data/prompts.py and the document lengths the 9B plan assumes
(configs/pretrain_mixture.py
MEAN_DOC_TOKENS, log-normal), many small shards per kind, then times
``input_pipeline.make_iterator`` exactly as the trainer builds it, plus its stages alone:

  read      ShardedRecordSource random reads (shuffled global order)
  decode    + records.decode / range check (the mixed, decoded document stream)
  pipeline  + chunk, FirstFit pack, batch: what the trainer receives

Usage:
  python bench/input_pipeline.py [--out /tmp/glmvoice_bench_corpus] [--shards_per_kind 1000]
      [--docs_per_shard 10] [--seq_len 8192] [--batch 16] [--seconds 20] [--num_workers 0]
Goal: >= 1,000,000 tokens/s per process (docs/data_plan.md explains the number).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glmvoice_jax.data import (
    input_pipeline,
    prompts,
    records,
    token_layout,  # noqa: E402
)

KINDS = ("interleaved", "speech_only", "asr_tts", "text")
SHARES = {"interleaved": 0.626, "speech_only": 0.062, "asr_tts": 0.028, "text": 0.284}
MEAN = {"interleaved": 1850.0, "speech_only": 380.0, "asr_tts": 190.0, "text": 1000.0}


def _doc(kind: str, rng: np.random.Generator, layout) -> records.Example:
    n = max(8, int(rng.lognormal(np.log(MEAN[kind]) - 0.18, 0.6)))
    text = rng.integers(0, layout.text_vocab_size, size=n)
    codes = rng.integers(0, layout.num_audio_tokens, size=n)
    if kind == "text":
        return prompts.text(text[: n - 3], layout, source="text")
    if kind == "speech_only":
        return prompts.speech(codes[: n - 4], layout, source="speech_only")
    if kind == "asr_tts":
        k = max(1, n // 5)
        if rng.random() < 0.5:
            return prompts.asr(codes[: n - k - 5], text[:k], layout, source="asr")
        return prompts.tts(text[:k], codes[: n - k - 5], layout, source="tts")
    pieces, pos = [], 0
    while pos < n:
        step = int(rng.integers(10, 60))
        pieces.append(("text", text[pos : pos + step]))
        pieces.append(("speech", codes[pos : pos + step // 2 + 1]))
        pos += step + step // 2 + 3
    return prompts.interleaved(pieces, layout, source="interleaved")


def write_corpus(out: str, shards_per_kind: int, docs_per_shard: int) -> dict[str, str]:
    layout = token_layout.get("glm4_voice")
    done = os.path.join(out, f"done-{shards_per_kind}-{docs_per_shard}")
    patterns = {k: os.path.join(out, k, "*.array_record") for k in KINDS}
    if os.path.exists(done):
        return patterns
    t0 = time.perf_counter()
    for kind in KINDS:
        for s in range(shards_per_kind):
            path = os.path.join(out, kind, f"{kind}-{s:05d}-of-{shards_per_kind:05d}.array_record")
            if os.path.exists(path):
                continue
            rng = np.random.default_rng([KINDS.index(kind), s])
            with records.ShardWriter(path) as w:
                for _ in range(docs_per_shard):
                    w.write(_doc(kind, rng, layout))
    open(done, "w").close()
    print(f"wrote {4 * shards_per_kind} shards in {time.perf_counter() - t0:.1f} s to {out}")
    return patterns


def _timed(fn, seconds: float) -> tuple[int, float]:
    fn()  # warm-up (opens readers, starts threads)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/glmvoice_bench_corpus")
    ap.add_argument("--shards_per_kind", type=int, default=1000)
    ap.add_argument("--docs_per_shard", type=int, default=10)
    ap.add_argument("--seq_len", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--num_workers", type=int, default=0)
    ap.add_argument("--prefetch", type=int, default=16)
    ap.add_argument("--stages", default="read,decode,pipeline")
    args = ap.parse_args()

    patterns = write_corpus(args.out, args.shards_per_kind, args.docs_per_shard)
    raw = {k: SHARES[k] / MEAN[k] for k in KINDS}
    sources = [
        input_pipeline.SourceSpec(k, (patterns[k],), raw[k] / sum(raw.values())) for k in KINDS
    ]
    layout = token_layout.get("glm4_voice")
    print(f"load: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    stages = args.stages.split(",")
    if "read" in stages or "decode" in stages:
        t0 = time.perf_counter()
        mixed = input_pipeline.mixed_records(sources, seed=0)
        docs = input_pipeline.record_dataset(sources, vocab_size=layout.vocab_size, seed=0)
        print(f"open {4 * args.shards_per_kind} shards: {time.perf_counter() - t0:.2f} s")
        for stage, ds in (("read", mixed), ("decode", docs)):
            if stage not in stages:
                continue
            pos = [0]

            def step(ds=ds, pos=pos, stage=stage):
                tok = 0
                for i in range(pos[0], pos[0] + 256):
                    x = ds[i]
                    tok += (len(x.data) - 12) // 5 if stage == "read" else len(x["tokens"])
                pos[0] += 256
                return tok

            n, secs = _timed(step, args.seconds / 2)
            print(f"{stage:>9}: {n / secs:>12,.0f} tokens/s  ({pos[0] / secs:,.0f} docs/s)")
    if "pipeline" in stages:
        t0 = time.perf_counter()
        it = input_pipeline.make_iterator(
            sources,
            seq_len=args.seq_len,
            batch_size=args.batch,
            vocab_size=layout.vocab_size,
            seed=0,
            num_workers=args.num_workers,
            prefetch_buffer_size=args.prefetch,
        )
        first = next(it)
        print(f"pipeline first batch: {time.perf_counter() - t0:.2f} s")
        fill = []

        def step():
            b = next(it)
            fill.append(float((b["segment_ids"] > 0).mean()))
            return b["tokens"].size

        n, secs = _timed(step, args.seconds)
        del first
        print(
            f" pipeline: {n / secs:>12,.0f} tokens/s per process (batch {args.batch} x "
            f"{args.seq_len}, workers {args.num_workers}); fill {100 * np.mean(fill):.1f}%"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max RSS of this process: {rss:,.0f} MiB")


if __name__ == "__main__":
    main()
