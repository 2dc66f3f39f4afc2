r"""The demo item set of the StoryCloze-style eval (evals/story_cloze.py, docs/eval.md).

Short templated stories over the words of the bundled espeak-ng sentences
(``assets/grammar_sentences.txt``, ``assets/sentences.txt``), so a tiny LM pretrained on the demo
corpus knows every word. Each item is a minimal pair: the correct and the wrong continuation are
the same sentence except for one slot, and the wrong slot contradicts the context:

  kind     context (3 sentences)                         continuation slot
  object   S bought a A O P. S T1 the O X. S I P2.       S T2 the O X2.     wrong: an object not in
                                                                            the context
  subject  S found a A O P. S carried the O P2. S2 I P3.  S T the O X.       wrong: a person not in
                                                                            the context
  place    S hid the O P. S I P2. S2 waited X.           S2 found the O P.  wrong: another place

(S/S2 people, A an adjective, O/O2 objects, P places, X times, T transitive and I intransitive
verbs.) Every word of every item is checked against the bundled sentences' vocabulary.

Usage (writes the committed demo set):
  python -m data_pipelines.story_cloze_items \
      --out glmvoice_jax/corpora/assets/story_cloze_demo.jsonl --num_items 100 --seed 0

The command line of ``glmvoice_jax.corpora.story_cloze_items`` (the job's code).
"""

from __future__ import annotations

from glmvoice_jax.corpora.story_cloze_items import DEMO_ITEMS_PATH, write_items

if __name__ == "__main__":
    # Flags are defined only when run as a script, so importing this module claims no flag names.
    from absl import app, flags

    _OUT = flags.DEFINE_string("out", DEMO_ITEMS_PATH, "Output JSONL.")
    _NUM = flags.DEFINE_integer("num_items", 100, "Number of stories.")
    _SEED = flags.DEFINE_integer("seed", 0, "Seed.")

    def main(argv) -> None:
        del argv
        print(write_items(_OUT.value, _NUM.value, _SEED.value))

    app.run(main)
