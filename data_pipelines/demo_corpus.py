r"""Deterministic toy corpus for the tiny CPU pre-training demo.

The demo must run on a fresh clone with no downloads, so its data is generated here: three sources
in the real record schema (``glmvoice_jax.data.records``) and the ``demo`` token layout (UTF-8
bytes as
text, 512 speech codes at offset 512, vocab 1024). Each source has structure a tiny model can learn
in minutes, so the demo's loss visibly falls:

* ``text``: English sentences from a small grammar, as bytes: [gMASK]<sop> text <|endoftext|>.
* ``speech``: [gMASK]<sop><|begin_of_audio|> codes <|end_of_audio|> (glm4voice.md §12 #14); codes
  follow a seeded sparse Markov chain.
* ``interleaved``: text documents in which some word spans are replaced by wrapped "speech": each
  byte becomes 2 codes through a fixed seeded table, mimicking the text-to-token model
  (glm4voice.md §7.2, §12 #13).

Every token is a prediction target (loss_mask = 1). Documents are 64-600 tokens long.

Usage: python -m data_pipelines.demo_corpus --out DIR

The command line of ``glmvoice_jax.corpora.demo_corpus`` (the job's code).
"""

from __future__ import annotations

from absl import app, flags

from glmvoice_jax.corpora.demo_corpus import write_demo_corpus


def _define_flags() -> None:
    # Defined only when run as a script, so importing this module never claims flag names.
    flags.DEFINE_string("out", None, "Output folder.", required=True)
    flags.DEFINE_integer("seed", 0, "Generation seed.")
    flags.DEFINE_integer("docs_per_source", 2000, "Documents per source.")
    flags.DEFINE_integer("num_shards", 4, "Shards per source.")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    patterns = write_demo_corpus(
        f.out, seed=f.seed, docs_per_source=f.docs_per_source, num_shards=f.num_shards
    )
    for source, pattern in patterns.items():
        print(f"{source}: {pattern}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
