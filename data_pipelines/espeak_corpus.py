r"""Real-speech demo corpus for the speech-tokenizer trainer, synthesised with espeak-ng.

Usage: python -m data_pipelines.espeak_corpus --out DIR [--sentences natural|grammar|grammar_6k]
           [--variants_per_sentence 3] [--max_sentences N]

The command line of ``glmvoice_jax.corpora.espeak_corpus``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

import json
import os

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora.espeak_corpus import _MARKER, SENTENCE_SETS, make_corpus


def main(argv) -> None:
    del argv
    out = flags.FLAGS.out
    paths = make_corpus(
        out,
        max_sentences=flags.FLAGS.max_sentences,
        variants_per_sentence=flags.FLAGS.variants_per_sentence,
        sentences_path=SENTENCE_SETS[flags.FLAGS.sentences],
    )
    with open(os.path.join(out, _MARKER)) as f:
        counts = json.load(f)["counts"]
    for split, path in paths.items():
        c = counts[split]
        print(f"{split}: {c['utterances']} utterances, {c['seconds'] / 60:.1f} min -> {path}")


if __name__ == "__main__":
    # Flags are defined here, not at import, so that the jobs and the package can import this
    # module next to their own flags.
    flags.DEFINE_string("out", None, "Output directory.", required=True)
    flags.DEFINE_enum("sentences", "natural", sorted(SENTENCE_SETS), "Bundled sentence list.")
    flags.DEFINE_integer("max_sentences", None, "Use only the first N sentences.")
    flags.DEFINE_integer("variants_per_sentence", 3, "Voices per sentence (1..6).")
    doors.run(main, __doc__)
