r"""Text corpus -> ``text`` records: [gMASK]<sop> {text} <|endoftext|>, every token a target.

Usage:
  python -m data_pipelines.text_records --input 'corpus/*.jsonl' --out DIR/text \
      --tokenizer /path/glm-4/tokenizer.model --layout glm4_voice --num_shards 1024
  python -m data_pipelines.text_records --input DATA_DIR/my_text --out DIR/text \
      --tokenizer bytes --layout demo
  python -m data_pipelines.text_records ... --runner beam \
      --beam_options='--runner=DataflowRunner --project=P --region=R ...'

The command line of ``glmvoice_jax.corpora.text_records``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

import functools

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora import beam_runner, corpus_io, shard_job
from glmvoice_jax.corpora.text_records import write_text_records


def _define_flags() -> None:
    flags.DEFINE_string(
        "input", None, "TFDS dataset folder or globs of .jsonl/.txt.", required=True
    )
    flags.DEFINE_string("out", None, "Output folder of the shards.", required=True)
    flags.DEFINE_string("tokenizer", None, "'bytes' or a tokenizer model file.", required=True)
    flags.DEFINE_string("layout", "glm4_voice", "Token layout (glmvoice_jax.data.token_layout).")
    flags.DEFINE_string("source", "text", "Corpus name stored in the records; shard prefix.")
    flags.DEFINE_string("split", "train", "Split of a TFDS input.")
    flags.DEFINE_integer("num_shards", 16, "Output shards.")
    flags.DEFINE_integer("max_tokens", 1 << 20, "Longer documents are skipped (listed).")
    corpus_io.add_process_flags(flags)
    beam_runner.define_flags(flags)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    job = functools.partial(
        write_text_records,
        f.input,
        f.out,
        tokenizer=f.tokenizer,
        layout=f.layout,
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
