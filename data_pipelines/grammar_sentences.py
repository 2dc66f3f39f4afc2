r"""Grammar sentences for the espeak-ng corpus: a seeded generator over the 108-word grammar.

``assets/grammar_sentences.txt`` (1200 sentences) was generated once from this grammar and
committed; this module writes it down and extends it. ``generate`` keeps a given list as the
first lines (every sentence must parse in the grammar) and appends new, distinct sentences drawn
with a seeded RNG, so that with the corpus' held-out rule (every 10th sentence,
glmvoice_jax/corpora/espeak_corpus.py) the held-out sentences of the shorter list stay held out, in
the same order, and no sentence of the extension repeats one of them: held-out sentences remain
unseen combinations of seen words.

Grammar (four templates, drawn with equal probability; "walked home" is one intransitive verb):

  TIME SUBJECT VERB the NOUN PLACE.          Last night the painter found the window at ...
  SUBJECT VERB the ADJ NOUN PLACE.           Our neighbor fixed the tall candle under the ...
  SUBJECT VERB a ADJ NOUN TIME.              The teacher hid a old chair every sunday.
  SUBJECT INTRANSITIVE PLACE TIME.           Her mother slept near the river after lunch.

16 subjects x 16 verbs x 12 adjectives x 16 nouns x 10 places x 8 times: about 1.2 M sentences.

Usage (writes the committed ``assets/grammar_sentences_6k.txt``):
  python -m data_pipelines.grammar_sentences --num_sentences 6000 \
      --out glmvoice_jax/corpora/assets/grammar_sentences_6k.txt

The command line of ``glmvoice_jax.corpora.grammar_sentences`` (the job's code).
"""

from __future__ import annotations

from absl import app, flags

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
    app.run(main)
