r"""Grammar sentences for the espeak-ng corpus: a seeded generator over the 108-word grammar.

Usage (writes the committed ``assets/grammar_sentences_6k.txt``):
  python -m data_pipelines.grammar_sentences --num_sentences 6000 \
      --out glmvoice_jax/corpora/assets/grammar_sentences_6k.txt

The command line of ``glmvoice_jax.corpora.grammar_sentences``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.corpora import espeak_corpus
from glmvoice_jax.corpora.grammar_sentences import BASE_PATH, generate, write


def main(argv) -> None:
    del argv
    keep = espeak_corpus.read_sentences(BASE_PATH)
    num, seed, out = flags.FLAGS.num_sentences, flags.FLAGS.seed, flags.FLAGS.out
    sentences = generate(num, seed=seed, keep=keep)
    write(out, sentences, seed=seed, num_kept=len(keep))
    print(f"wrote {len(sentences)} sentences ({len(keep)} kept) -> {out}")


if __name__ == "__main__":
    # Flags are defined here, not at import, so that importing this module next to another job
    # (espeak_corpus also defines --out) cannot clash.
    flags.DEFINE_string("out", None, "Output sentence file.", required=True)
    flags.DEFINE_integer("num_sentences", 6000, "Sentences in all (kept + new).")
    flags.DEFINE_integer("seed", 0, "RNG seed of the new sentences.")
    doors.run(main, __doc__)
