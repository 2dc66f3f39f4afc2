r"""Builds a TFDS dataset (array_record, no TensorFlow) from a local corpus, offline.

Usage:
  # LibriSpeech layout: [SPLIT/]SPEAKER/CHAPTER/*.flac + *.trans.txt
  python -m data_pipelines.build_tfds --kind librispeech --src /data/LibriSpeech \
      --data_dir /data/tfds --name librispeech_local [--sample_rate 16000]
  # Speech manifest(s): JSONL {"id", "audio", "text"?, "speaker"?}
  python -m data_pipelines.build_tfds --kind manifest --src train=train.jsonl,test=test.jsonl \
      --data_dir /data/tfds --name my_speech
  # Text: .jsonl {"text", "id"?} or .txt (one document per line)
  python -m data_pipelines.build_tfds --kind text --src 'train=/data/text/*.jsonl' \
      --data_dir /data/tfds --name my_text

Prints the dataset folder, its splits and sizes, and how many inputs were skipped (listed in
``errors.<split>.jsonl`` there). Read it back with
``tfds.builder_from_directory(FOLDER).as_data_source(split)``. Builders: tfds_builders.py.
"""

from __future__ import annotations

import json
import os

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora import tfds_builders


def _define_flags() -> None:
    flags.DEFINE_enum("kind", None, tfds_builders.KINDS, "Corpus kind.", required=True)
    flags.DEFINE_string("src", None, "Root folder, or split=path[,split=path].", required=True)
    flags.DEFINE_string("data_dir", None, "TFDS data dir to write into.", required=True)
    flags.DEFINE_string("name", None, "Dataset name (snake_case).", required=True)
    flags.DEFINE_integer("sample_rate", None, "Resample audio to this rate (default: keep).")
    flags.DEFINE_float("max_seconds", 600.0, "Longer audio is skipped (listed).")
    flags.DEFINE_integer("max_chars", 10_000_000, "Longer text documents are skipped (listed).")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    folder = tfds_builders.build(
        f.kind,
        f.src,
        f.data_dir,
        f.name,
        sample_rate=f.sample_rate,
        max_seconds=f.max_seconds,
        max_chars=f.max_chars,
    )
    with open(os.path.join(folder, "dataset_info.json")) as fh:
        info = json.load(fh)
    print(f"built {folder}")
    for split in info.get("splits", []):
        n = sum(int(x) for x in split.get("shardLengths", []))
        errs = os.path.join(folder, f"errors.{split['name']}.jsonl")
        skipped = 0
        if os.path.exists(errs):
            with open(errs) as e:
                skipped = sum(1 for _ in e)
        print(f"  {split['name']}: {n:,} examples, {skipped:,} inputs skipped ({errs})")


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
