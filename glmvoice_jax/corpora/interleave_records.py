r"""Text corpus + text-to-token model -> ``interleaved`` records (glm4voice.md §7.2, §12 #13).

Per document (text ids without [gMASK]<sop> / <|endoftext|>): ``interleave.select_spans`` draws
Poisson(λ) span lengths until they cover η of the text and places them at random, non-overlapping
and at least one token apart; ``sampling.SpeechSampler`` turns every span's text into speech
tokens with the text-to-token checkpoint; ``interleave.build_document`` writes
[gMASK]<sop> text <|begin_of_audio|> speech <|end_of_audio|> text ... <|endoftext|>, every token a
target. Spans of a block of documents are sampled together (batches of similar length).

Randomness: the spans of document i come from ``item_rng(seed, i)`` and span j's sampling seed is
``item_seed(seed, i, j)``, so the output is the same for any shard / process / batch layout, and a
killed job resumes to identical shards. Per-shard ``.stats.json`` extras: ``spans``,
``span_text_tokens``, ``doc_text_tokens``, ``span_speech_tokens`` (glmvoice-data-stats reports mean
span length and η from them); they hold no timings, so a resumed job's sidecars are identical too.

Usage:
  python -m data_pipelines.interleave_records --input 'fineweb/*.jsonl' --out DIR/interleaved \
      --checkpoint T2T_WORKDIR --tokenizer glm-4/tokenizer.model --num_shards 4096 \
      [--span_mean 10 --span_ratio 0.3 --temperature 1.0 --top_p 0.9]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from glmvoice_jax.corpora import corpus_io, shard_job
from glmvoice_jax.data import interleave, records
from glmvoice_jax.inference import sampling

_BLOCK_DOCS = 256  # documents whose spans are sampled together


def write_interleaved_records(
    input_spec: str,
    out_dir: str,
    *,
    sampler: sampling.SpeechSampler,
    tokenizer: str,
    span_cfg: interleave.SpanConfig | None = None,
    source: str = "interleaved",
    num_shards: int = 16,
    split: str = "train",
    seed: int = 0,
    max_tokens: int = 1 << 20,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = True,
    checkpoint_id: str = "",
) -> tuple[shard_job.JobPlan, dict]:
    """Runs the job with a ready sampler; returns (plan, totals). See the module docstring.

    ``checkpoint_id`` names the text-to-token model in job.json (reruns must use the same one).
    """
    span_cfg = span_cfg or interleave.SpanConfig()
    lay = sampler.layout
    tok = corpus_io.load_tokenizer(tokenizer, lay)
    corpus = corpus_io.open_corpus(input_spec, split)
    if process_index is None or process_count is None:
        process_index, process_count = shard_job.default_process()
    plan = shard_job.JobPlan(out_dir, source, len(corpus), num_shards, process_index, process_count)

    def documents(r: range, log: shard_job.ShardLog) -> Iterator[tuple]:
        for item in corpus.iter_range(r):
            if item.error:
                log.error(item.index, item.id, *item.error)
                continue
            text = item.fields.get("text")
            if not isinstance(text, str) or not text.strip():
                log.error(item.index, item.id, "empty_text")
                continue
            ids = tok.encode(text, add_prefix=False)
            if max(ids) >= lay.text_vocab_size:
                log.error(item.index, item.id, "bad_tokens", "text encodes to special tokens")
                continue
            spans = interleave.select_spans(
                shard_job.item_rng(seed, item.index), len(ids), span_cfg
            )
            yield item, ids, spans

    def produce(shard: int, r: range, log: shard_job.ShardLog) -> Iterator:
        del shard
        for start in range(r.start, r.stop, _BLOCK_DOCS):
            block = list(documents(range(start, min(start + _BLOCK_DOCS, r.stop)), log))
            texts, seeds = [], []
            for item, ids, spans in block:
                for j, (a, b) in enumerate(spans):
                    texts.append(ids[a:b])
                    seeds.append(shard_job.item_seed(seed, item.index, j))
            speech = sampler.sample(texts, seeds) if texts else []
            pos = 0
            for item, ids, spans in block:
                codes = speech[pos : pos + len(spans)]
                pos += len(spans)
                ex = interleave.build_document(
                    np.asarray(ids, np.int32), spans, codes, lay, source=source
                )
                log.add("docs", 1)
                log.add("spans", len(spans))
                log.add("doc_text_tokens", len(ids))
                log.add("span_text_tokens", sum(b - a for a, b in spans))
                log.add("span_speech_tokens", sum(len(c) for c in codes))
                yield item.index, item.id, ex

    params = dict(
        job="interleave_records",
        input=input_spec,
        tokenizer=tokenizer,
        layout=lay.name,
        split=split,
        seed=seed,
        max_tokens=max_tokens,
        span=dataclasses.asdict(span_cfg),
        sampling=dataclasses.asdict(sampler.cfg),
        checkpoint=checkpoint_id,
        record_version=records.VERSION,
    )
    totals = shard_job.run(
        plan, produce, params=params, layout=lay, max_tokens=max_tokens, progress=progress
    )
    return plan, totals
