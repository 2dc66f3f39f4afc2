r"""Text corpus + text-to-token model -> ``interleaved`` records (glm4voice.md §7.2, §12 #13).

Usage:
  python -m data_pipelines.interleave_records --input 'fineweb/*.jsonl' --out DIR/interleaved \
      --checkpoint T2T_WORKDIR --tokenizer glm-4/tokenizer.model --num_shards 4096 \
      [--span_mean 10 --span_ratio 0.3 --temperature 1.0 --top_p 0.9]

The command line of ``glmvoice_jax.corpora.interleave_records``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora import corpus_io, shard_job
from glmvoice_jax.corpora.interleave_records import write_interleaved_records
from glmvoice_jax.data import interleave
from glmvoice_jax.inference import sampling


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
    doors.run(main, __doc__)
