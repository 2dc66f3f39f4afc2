r"""Random-access and pipeline throughput of parquet / arrow text sources (Hugging Face files).

Writes (once) a FineWeb-like text corpus (log-normal lengths, mean ~3,000 characters) three
ways: parquet with small row groups, parquet with pyarrow's default row groups (one group per
file here, as large exports have), and an Arrow IPC stream (``datasets``' save_to_disk format).
For each, times ``hf_sources.TableTextSource`` reads in the shuffled order the mixture uses
(tokenized with the byte tokenizer), then the whole pipeline (``make_iterator``: mix, decode,
chunk, pack, batch) as the trainer builds it.

Usage:
  python bench/hf_sources.py [--out /tmp/glmvoice_bench_hf] [--docs 20000] [--files 4]
      [--seq_len 8192] [--batch 8] [--seconds 10] [--cache_mb 512]
--cache_mb smaller than the corpus (~60 MB of text by default) shows a large parquet corpus.
Results: docs/corpora_at_scale.md (machine load stated there).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glmvoice_jax.data import input as input_pipeline  # noqa: E402
from glmvoice_jax.data.input import hf_sources  # noqa: E402

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "on", "with", "voice", "speech"]


def write_corpus(out: str, docs: int, files: int) -> dict[str, str]:
    """{layout name: glob} of the three copies; written once."""
    globs = {
        "parquet_rg1k": f"{out}/parquet_rg1k/*.parquet",
        "parquet_1group": f"{out}/parquet_1group/*.parquet",
        "arrow": f"{out}/arrow/*.arrow",
    }
    if os.path.isdir(f"{out}/arrow"):
        return globs
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(450), 0.9, docs), 5, 20000).astype(int)  # words
    texts = [" ".join(rng.choice(WORDS, n)) for n in lengths]
    per = -(-docs // files)
    for name in ("parquet_rg1k", "parquet_1group", "arrow"):
        os.makedirs(f"{out}/{name}")
    for k in range(files):
        table = pa.table({"text": texts[k * per : (k + 1) * per]})
        pq.write_table(table, f"{out}/parquet_rg1k/{k:05d}.parquet", row_group_size=1000)
        pq.write_table(table, f"{out}/parquet_1group/{k:05d}.parquet")
        with pa.ipc.new_stream(f"{out}/arrow/data-{k:05d}-of-{files:05d}.arrow", table.schema) as w:
            for batch in table.to_batches(max_chunksize=1000):
                w.write_batch(batch)
    return globs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/glmvoice_bench_hf")
    p.add_argument("--docs", type=int, default=20000)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--seq_len", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--cache_mb", type=int, default=512, help="decoded parquet groups kept")
    args = p.parse_args()
    hf_sources._CACHE_BYTES = args.cache_mb << 20
    globs = write_corpus(args.out, args.docs, args.files)
    opts = (("layout", "demo"), ("tokenizer", "bytes"))
    print(f"load average {os.getloadavg()[0]:.1f}")
    for name, glob in globs.items():
        fmt = "arrow" if name == "arrow" else "parquet"
        spec = input_pipeline.SourceSpec("web", (glob,), 1.0, fmt, opts)
        start = time.perf_counter()
        source = hf_sources.open_source(spec, input_pipeline.list_shards(glob))
        opened = time.perf_counter() - start
        order = np.random.default_rng(1).permutation(len(source))
        n, tokens, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds and n < len(order):
            tokens += (len(source[int(order[n])].data) - 12) // 5  # int32 id + uint8 mask
            n += 1
        dt = time.perf_counter() - start
        it = input_pipeline.make_iterator(
            [spec], seq_len=args.seq_len, batch_size=args.batch, vocab_size=1024, seed=0
        )
        next(it)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            next(it)
            steps += 1
        pdt = time.perf_counter() - start
        print(
            f"{name:15s} open {opened:5.2f} s | random reads {n / dt:8.0f} docs/s "
            f"{tokens / dt / 1e6:6.2f}M tokens/s | pipeline "
            f"{steps * args.batch * args.seq_len / pdt / 1e6:6.2f}M tokens/s"
        )


if __name__ == "__main__":
    main()
