r"""Real-speech demo corpus for the speech-tokenizer trainer, synthesised with espeak-ng.

The bundled English sentences (``assets/sentences.txt``: 255 hand-written ones;
``assets/grammar_sentences.txt``: 1200 over a 108-word grammar;
``assets/grammar_sentences_6k.txt``: those 1200, then 4800 more from the same grammar, made by
glmvoice_jax/corpora/grammar_sentences.py; all written for this project) are spoken by several
espeak-ng voices at several speeds and pitches, resampled by sox to 16 kHz mono 16-bit PCM
(``sox -R -D``: repeatable, no dither, so the corpus is bit-identical on every run), and listed in
two manifests, one JSON object per line:

  {"id": "s0012_v1", "audio": "audio/s0012_v1.wav", "text": "...", "speaker": "en-gb+m3",
   "speed_wpm": 165, "pitch": 50, "seconds": 2.9}

``audio`` is relative to the manifest's directory. The split is by *sentence*: every
``heldout_every``-th sentence (all its voices) goes to ``heldout.jsonl``, so held-out WER/CER
measure transcription of text the model never saw, not recall of memorised sentences.

The audio is made on first use into a given directory (never into git) and not redone when the
directory already holds a finished corpus of the same settings (``corpus.json`` records them).

Needs the ``espeak-ng`` and ``sox`` programs: ``apt-get install -y espeak-ng sox``.

Usage: python -m data_pipelines.espeak_corpus --out DIR [--sentences natural|grammar|grammar_6k]
           [--variants_per_sentence 3] [--max_sentences N]

The command line of ``glmvoice_jax.corpora.espeak_corpus`` (the job's code).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

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
    app.run(main)
