r"""Speech tokens -> ``speech``, ``asr`` or ``tts`` records (templates: data/prompts.py).

Usage:
  python -m data_pipelines.speech_records --tokens 'tok/*.jsonl' --kind asr \
      --transcripts DATA_DIR/librispeech_local/1.0.0 --tokenizer glm-4/tokenizer.model \
      --out DIR/asr
  python -m data_pipelines.speech_records ... --runner beam \
      --beam_options='--runner=DataflowRunner --project=P --region=R ...'

The command line of ``glmvoice_jax.corpora.speech_records``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

import functools

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora import beam_runner, corpus_io, shard_job
from glmvoice_jax.corpora.speech_records import KINDS, write_speech_records


def _define_flags() -> None:
    flags.DEFINE_string("tokens", None, "Globs of tokenizer output JSONL.", required=True)
    flags.DEFINE_enum("kind", None, KINDS, "Record kind to write.", required=True)
    flags.DEFINE_string("out", None, "Output folder of the shards.", required=True)
    flags.DEFINE_string("transcripts", None, "Manifest JSONL or TFDS dataset (asr / tts).")
    flags.DEFINE_string("tokenizer", None, "'bytes' or a tokenizer model file (asr / tts).")
    flags.DEFINE_string("layout", "glm4_voice", "Token layout (glmvoice_jax.data.token_layout).")
    flags.DEFINE_string("source", None, "Corpus name in the records; shard prefix (default kind).")
    flags.DEFINE_string("split", "train", "Split of a TFDS transcripts dataset.")
    flags.DEFINE_integer("num_shards", 16, "Output shards.")
    flags.DEFINE_integer("max_tokens", 8192, "Longer records are skipped (listed).")
    corpus_io.add_process_flags(flags)
    beam_runner.define_flags(flags)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    job = functools.partial(
        write_speech_records,
        f.tokens,
        f.out,
        kind=f.kind,
        layout=f.layout,
        transcripts=f.transcripts,
        tokenizer=f.tokenizer,
        source=f.source,
        num_shards=f.num_shards,
        split=f.split,
        max_tokens=f.max_tokens,
    )
    if f.runner == "beam":
        plan, totals = beam_runner.run_job(
            functools.partial(job, process_index=0, process_count=1), f.beam_options
        )
    else:
        plan, totals = job(process_index=f.process_index, process_count=f.process_count)
    shard_job.report(plan, totals)


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
