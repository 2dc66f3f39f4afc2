r"""The demo item set of the StoryCloze-style eval (evals/story_cloze.py, docs/eval.md).

Usage (writes the committed demo set):
  python -m data_pipelines.story_cloze_items \
      --out glmvoice_jax/corpora/assets/story_cloze_demo.jsonl --num_items 100 --seed 0

The command line of ``glmvoice_jax.corpora.story_cloze_items``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

from glmvoice_jax.corpora.story_cloze_items import DEMO_ITEMS_PATH, write_items

if __name__ == "__main__":
    # Flags are defined only when run as a script, so importing this module claims no flag names.
    from absl import flags

    from glmvoice_jax.cli import doors

    _OUT = flags.DEFINE_string("out", DEMO_ITEMS_PATH, "Output JSONL.")
    _NUM = flags.DEFINE_integer("num_items", 100, "Number of stories.")
    _SEED = flags.DEFINE_integer("seed", 0, "Seed.")

    def main(argv) -> None:
        del argv
        print(write_items(_OUT.value, _NUM.value, _SEED.value))

    doors.run(main, __doc__)
