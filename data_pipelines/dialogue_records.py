r"""Dialogues -> stage-2 SFT records (two loss copies per dialogue, glm4voice.md §8).

Usage:
  glmvoice-tokenize --checkpoint TOKENIZER --input dialogue_audio.jsonl --output tok/audio.jsonl
  python -m data_pipelines.dialogue_records --dialogues 'dialogues/*.jsonl' \
      --speech_tokens 'tok/*.jsonl' --tokenizer glm-4/tokenizer.model --out DIR/sft \
      [--runner beam --beam_options='--runner=DataflowRunner ...']

Writes DIR/sft/speech_output/ and DIR/sft/text_output/ (the two sources of
configs/glm4_voice_9b_sft.py). The command line of ``glmvoice_jax.corpora.dialogue_records``
(which documents the job: dialogue format, template, masks, errors).
"""

from __future__ import annotations

import functools

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora import beam_runner, corpus_io, shard_job
from glmvoice_jax.corpora.dialogue_records import write_dialogue_records


def _define_flags() -> None:
    flags.DEFINE_string("dialogues", None, "Globs of dialogue JSONL files.", required=True)
    flags.DEFINE_string("out", None, "Output folder (two subfolders of shards).", required=True)
    flags.DEFINE_string("tokenizer", None, "'bytes' or a tokenizer model file.", required=True)
    flags.DEFINE_string("speech_tokens", None, "Globs of glmvoice-tokenize JSONL (audio refs).")
    flags.DEFINE_string("layout", "glm4_voice", "Token layout with the chat role tokens.")
    flags.DEFINE_string("source", "sft", "Corpus name in the records; shard prefix.")
    flags.DEFINE_integer("num_shards", 16, "Output shards per copy.")
    flags.DEFINE_integer("max_tokens", 8192, "Longer dialogues are skipped (listed).")
    corpus_io.add_process_flags(flags)
    beam_runner.define_flags(flags)


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    job = functools.partial(
        write_dialogue_records,
        f.dialogues,
        f.out,
        tokenizer=f.tokenizer,
        layout=f.layout,
        speech_tokens=f.speech_tokens,
        source=f.source,
        num_shards=f.num_shards,
        max_tokens=f.max_tokens,
    )
    if f.runner == "beam":
        results = beam_runner.run_job(
            functools.partial(job, process_index=0, process_count=1), f.beam_options
        )
    else:
        results = job(process_index=f.process_index, process_count=f.process_count)
    for plan, totals in results.values():
        shard_job.report(plan, totals)


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
