"""What a pre-training config's input pipeline actually feeds the model (``glmvoice-data-stats``).

Three measurements, all through the training code path (``input_pipeline``):

* **Documents** (``num_docs`` of the global mixed stream, ``input_pipeline.mixed_records``, so
  each one's source is known): per source its document and token shares, speech / text / special
  token counts, loss-token counts, record kinds, and for interleaved records the speech spans
  (<|begin_of_audio|> ... <|end_of_audio|>) and their mean length in speech tokens. Token shares
  are compared with ``config.input.token_shares`` (the Table 2 targets, glm4voice.md §7.1) when
  the config has them, else with the normalised weights; ``suggested_weights`` are the document
  weights that would hit the targets given the measured mean document lengths (Grain mixes by
  document, glm4voice.md §12 #17).
* **Job statistics**: the ``<shard>.stats.json`` files that the data_pipelines jobs write next to
  their shards; for interleaved sources they give the measured mean span length in *text* tokens
  and η (span text tokens / document text tokens), which the records alone cannot show.
* **Packed batches** (``num_batches`` from ``input_pipeline.make_iterator``, one process owning the
  whole global batch): packing fill ratio, loss-token fraction, speech vs text tokens, and the
  pipeline's tokens/s on this machine (first batch excluded: it opens the shards).
"""

from __future__ import annotations

import collections
import json
import math
import time
from collections.abc import Mapping

import ml_collections as mlc
import numpy as np
from etils import epath

from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.data import records, token_layout

STATS_SUFFIX = ".stats.json"  # written by glmvoice_jax/corpora/shard_job.py


def _doc_stats(sources, layout: token_layout.TokenLayout, seed: int, num_docs: int) -> dict:
    boa = layout.special(token_layout.BEGIN_AUDIO) if layout.num_audio_tokens else -1
    per: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    stream = input_pipeline.mixed_records(sources, seed=seed)
    for i in range(num_docs):
        raw = stream[i]
        ex = records.decode(raw.data, where=f"source {raw.source!r} shard {raw.path}")
        c = per[raw.source]
        speech = int(layout.is_audio(ex.tokens).sum()) if layout.num_audio_tokens else 0
        text = int((ex.tokens < layout.text_vocab_size).sum())
        c["docs"] += 1
        c["tokens"] += len(ex.tokens)
        c["speech_tokens"] += speech
        c["text_tokens"] += text
        c["special_tokens"] += len(ex.tokens) - speech - text
        c["loss_tokens"] += int(ex.loss_mask.sum())
        c[f"kind_{ex.kind}"] += 1
        if ex.kind == "interleaved":
            c["speech_spans"] += int((ex.tokens == boa).sum())
            c["span_speech_tokens"] += speech
    return per


def _job_stats(spec: input_pipeline.SourceSpec, max_files: int) -> dict | None:
    files = input_pipeline.list_shards(spec.paths)[:max_files]
    extra: collections.Counter = collections.Counter()
    totals: collections.Counter = collections.Counter()
    found = 0
    for f in files:
        p = epath.Path(f + STATS_SUFFIX)
        if not p.exists():
            continue
        found += 1
        s = json.loads(p.read_text())
        extra.update(s.get("extra", {}))
        totals.update({k: s.get(k, 0) for k in ("records", "tokens", "errors", "inputs")})
    if not found:
        return None
    out = {"stats_files": found, "shards": len(files), **totals}
    if extra.get("spans"):
        out["mean_span_text_tokens"] = extra["span_text_tokens"] / extra["spans"]
        out["eta"] = extra["span_text_tokens"] / max(extra["doc_text_tokens"], 1)
        out["speech_tokens_per_span_text_token"] = extra["span_speech_tokens"] / max(
            extra["span_text_tokens"], 1
        )
    return out


def _packed_stats(config: mlc.ConfigDict, sources, layout, num_batches: int) -> dict:
    inp = config.input
    start = time.perf_counter()
    it = input_pipeline.make_iterator(
        sources,
        seq_len=inp.seq_len,
        batch_size=inp.global_batch_size,
        vocab_size=layout.vocab_size,
        seed=config.seed,
        num_workers=0,
        prefetch_buffer_size=inp.prefetch_buffer_size,
    )
    c: collections.Counter = collections.Counter()
    first = None
    for b in range(num_batches + 1):
        batch = next(it)
        if b == 0:
            first = time.perf_counter() - start
            t0 = time.perf_counter()
            continue
        tokens, seg = batch["tokens"], batch["segment_ids"]
        real = seg > 0
        c["slots"] += tokens.size
        c["tokens"] += int(real.sum())
        c["loss_tokens"] += int(batch["loss_mask"].sum())
        if layout.num_audio_tokens:
            c["speech_tokens"] += int((layout.is_audio(tokens) & real).sum())
        c["segments"] += int(sum(len(np.unique(row[row > 0])) for row in seg))
    secs = time.perf_counter() - t0
    return {
        "batches": num_batches,
        "rows": num_batches * inp.global_batch_size,
        "fill_ratio": c["tokens"] / max(c["slots"], 1),
        "loss_fraction": c["loss_tokens"] / max(c["tokens"], 1),
        "speech_fraction": c["speech_tokens"] / max(c["tokens"], 1),
        "segments_per_row": c["segments"] / max(num_batches * inp.global_batch_size, 1),
        "tokens_per_sec": c["slots"] / secs if secs > 0 else math.nan,
        "first_batch_secs": first,
    }


def compute(
    config: mlc.ConfigDict,
    workdir: str,
    *,
    num_docs: int = 10_000,
    num_batches: int = 10,
    max_stats_files: int = 100_000,
) -> dict:
    """All statistics of ``config.input`` as a JSON-able dict (see the module docstring)."""
    layout = token_layout.get(config.tokens.layout)
    sources = [
        s for s in input_pipeline.sources_from_config(config.input.sources, workdir) if s.weight > 0
    ]
    per = _doc_stats(sources, layout, config.seed, num_docs) if num_docs else {}
    total_docs = sum(c["docs"] for c in per.values()) or 1
    total_tokens = sum(c["tokens"] for c in per.values()) or 1
    weights = {s.name: s.weight for s in sources}
    wsum = sum(weights.values())
    targets = dict(config.input.get("token_shares", {}) or {})
    tsum = sum(targets.get(n, 0.0) for n in weights) or 1.0
    out_sources = {}
    for s in sources:
        c = per.get(s.name, collections.Counter())
        mean_len = c["tokens"] / c["docs"] if c["docs"] else math.nan
        row = {
            "weight": s.weight,
            "doc_share": c["docs"] / total_docs,
            "doc_share_configured": s.weight / wsum,
            "token_share": c["tokens"] / total_tokens,
            "token_share_configured": (
                targets[s.name] / tsum if s.name in targets else s.weight / wsum
            ),
            "mean_doc_tokens": mean_len,
            **{k: int(v) for k, v in c.items()},
        }
        if c["speech_spans"]:
            row["mean_span_speech_tokens"] = c["span_speech_tokens"] / c["speech_spans"]
        job = _job_stats(s, max_stats_files)
        if job:
            row["job"] = job
        out_sources[s.name] = row
    # Document weights that turn the measured mean lengths into the configured token shares.
    raw = {
        n: r["token_share_configured"] / r["mean_doc_tokens"]
        for n, r in out_sources.items()
        if r["mean_doc_tokens"] and not math.isnan(r["mean_doc_tokens"])
    }
    norm = sum(raw.values()) or 1.0
    result = {
        "docs": total_docs if per else 0,
        "tokens": total_tokens if per else 0,
        "sources": out_sources,
        "suggested_weights": {n: v / norm for n, v in raw.items()},
        "max_token_share_error": max(
            (abs(r["token_share"] - r["token_share_configured"]) for r in out_sources.values()),
            default=0.0,
        ),
    }
    if num_batches:
        result["packed"] = _packed_stats(config, sources, layout, num_batches)
    return result


def format_report(stats: Mapping) -> str:
    """A human-readable table of ``compute``'s result."""
    lines = [
        f"documents: {stats['docs']:,}   tokens: {stats['tokens']:,}",
        f"{'source':<14}{'weight':>8}{'docs %':>9}{'tokens %':>10}{'target %':>10}"
        f"{'mean len':>10}{'speech %':>10}{'loss %':>8}",
    ]
    for name, r in stats["sources"].items():
        tok = max(r.get("tokens", 0), 1)
        lines.append(
            f"{name:<14}{r['weight']:>8.4g}{100 * r['doc_share']:>9.2f}"
            f"{100 * r['token_share']:>10.2f}{100 * r['token_share_configured']:>10.2f}"
            f"{r['mean_doc_tokens']:>10.1f}{100 * r.get('speech_tokens', 0) / tok:>10.1f}"
            f"{100 * r.get('loss_tokens', 0) / tok:>8.1f}"
        )
    lines.append(
        f"max |token share - target|: {100 * stats['max_token_share_error']:.2f} points; "
        "suggested weights: "
        + ", ".join(f"{n}={w:.4g}" for n, w in stats["suggested_weights"].items())
    )
    for name, r in stats["sources"].items():
        job = r.get("job")
        if job and "eta" in job:
            lines.append(
                f"{name}: interleaving from {job['stats_files']} job stats files: mean span "
                f"{job['mean_span_text_tokens']:.2f} text tokens, eta {job['eta']:.4f}, "
                f"{job['speech_tokens_per_span_text_token']:.2f} speech tokens per span text token"
            )
        if "mean_span_speech_tokens" in r:
            lines.append(
                f"{name}: {r['speech_spans']:,} speech spans in the documents read, "
                f"{r['mean_span_speech_tokens']:.1f} speech tokens each"
            )
    p = stats.get("packed")
    if p:
        lines.append(
            f"packed: {p['rows']:,} rows; fill {100 * p['fill_ratio']:.2f}%, loss tokens "
            f"{100 * p['loss_fraction']:.1f}%, speech tokens {100 * p['speech_fraction']:.1f}%, "
            f"{p['segments_per_row']:.1f} documents/row; pipeline {p['tokens_per_sec']:,.0f} "
            f"tokens/s (first batch {p['first_batch_secs']:.2f} s)"
        )
    return "\n".join(lines)
