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
from absl import app, flags

from data_pipelines import corpus_io, shard_job
from glmvoice_jax import interleave, records, sampling

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


def _define_flags() -> None:
    flags.DEFINE_string("input", None, "TFDS text dataset or globs of .jsonl/.txt.", required=True)
    flags.DEFINE_string("out", None, "Output folder of the shards.", required=True)
    flags.DEFINE_string("checkpoint", None, "Text-to-token checkpoint (CKPT).", required=True)
    flags.DEFINE_string("tokenizer", None, "'bytes' or a tokenizer model file.", required=True)
    flags.DEFINE_string("source", "interleaved", "Corpus name in the records; shard prefix.")
    flags.DEFINE_string("split", "train", "Split of a TFDS input.")
    flags.DEFINE_integer("num_shards", 16, "Output shards.")
    flags.DEFINE_integer("seed", 0, "Span and sampling seed.")
    flags.DEFINE_integer("max_tokens", 1 << 20, "Longer documents are skipped (listed).")
    flags.DEFINE_float("span_mean", 10.0, "λ: Poisson mean span length (text tokens).")
    flags.DEFINE_float("span_ratio", 0.3, "η: fraction of text tokens turned into speech.")
    flags.DEFINE_enum("span_stop", "nearest", interleave.STOP_RULES, "Span drawing stop rule.")
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0 = greedy).")
    flags.DEFINE_float("top_p", 0.9, "Nucleus mass.")
    flags.DEFINE_float("max_len_ratio", 8.0, "Speech tokens allowed per text token.")
    flags.DEFINE_integer("max_len_extra", 16, "Speech tokens allowed on top of the ratio.")
    flags.DEFINE_integer("batch_size", 64, "Spans per sampling batch.")
    flags.DEFINE_string("compute_dtype", None, "Sampling dtype (default: the checkpoint's).")
    corpus_io.add_process_flags(flags)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    cfg = sampling.SamplingConfig(
        temperature=f.temperature,
        top_p=f.top_p,
        max_len_ratio=f.max_len_ratio,
        max_len_extra=f.max_len_extra,
        batch_size=f.batch_size,
    )
    sampler = sampling.SpeechSampler.from_checkpoint(
        f.checkpoint, cfg, compute_dtype=f.compute_dtype
    )
    plan, totals = write_interleaved_records(
        f.input,
        f.out,
        sampler=sampler,
        tokenizer=f.tokenizer,
        span_cfg=interleave.SpanConfig(f.span_mean, f.span_ratio, stop=f.span_stop),
        source=f.source,
        num_shards=f.num_shards,
        split=f.split,
        seed=f.seed,
        max_tokens=f.max_tokens,
        process_index=f.process_index,
        process_count=f.process_count,
        checkpoint_id=f.checkpoint,
    )
    shard_job.report(plan, totals)
    s = sampler.stats
    if s["seconds"]:
        print(
            f"  sampling: {s['spans']:,} spans, {s['speech_tokens']:,} speech tokens in "
            f"{s['seconds']:.1f} s = {s['spans'] / s['seconds']:,.1f} spans/s, "
            f"{s['speech_tokens'] / s['seconds']:,.0f} speech tokens/s"
        )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
