r"""Hugging Face speech corpora -> the manifest of `build_tfds --kind manifest`, glmvoice-tokenize.

Usage:
  # Multilingual LibriSpeech as on the Hub (LANGUAGE/SPLIT-*.parquet) or OpenSLR (mls_LANGUAGE/)
  python -m data_pipelines.hf_manifest --kind mls --src hub/multilingual_librispeech/polish \
      --split train --out /data/mls_polish_train
  # Emilia / Emilia-YODAS WebDataset tars (LANG/LANG-B00000k.tar), DNSMOS >= 3.0
  python -m data_pipelines.hf_manifest --kind emilia --src 'hub/Emilia/EN/*.tar' \
      --min_dnsmos 3.0 --out /data/emilia_en
  # then
  python -m data_pipelines.build_tfds --kind manifest --src /data/emilia_en/manifest.jsonl \
      --data_dir /data/tfds --name emilia_en --sample_rate 16000

FineWeb-style parquet text needs no recipe: ``data_pipelines.text_records --input
'fineweb/data/*/*.parquet'`` reads it, and the trainer reads parquet / arrow directly
(``input.sources.NAME.format``). The command line of ``glmvoice_jax.corpora.hf_corpora``
(which documents the layouts, outputs and errors; docs/corpora_at_scale.md).
"""

from __future__ import annotations

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora import hf_corpora


def _define_flags() -> None:
    flags.DEFINE_enum("kind", None, ["mls", "emilia"], "Corpus layout.", required=True)
    flags.DEFINE_string("src", None, "MLS language folder / parquet glob; Emilia tar globs.")
    flags.DEFINE_string("out", None, "Output folder: manifest.jsonl, errors, audio/.")
    flags.DEFINE_string("split", "train", "MLS split (train, dev, test, 9_hours, 1_hours).")
    flags.DEFINE_float("min_dnsmos", 0.0, "Emilia: skip (and list) utterances below this DNSMOS.")
    flags.mark_flags_as_required(["src", "out"])


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.kind == "mls":
        path, n, skipped = hf_corpora.mls_manifest(f.src, f.out, f.split)
    else:
        path, n, skipped = hf_corpora.emilia_manifest(f.src, f.out, f.min_dnsmos)
    print(f"wrote {path}: {n:,} utterances, {skipped:,} skipped ({f.out}/{hf_corpora.ERRORS})")


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
