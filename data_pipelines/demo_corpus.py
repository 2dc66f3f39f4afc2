r"""Deterministic toy corpus for the tiny CPU pre-training demo.

Usage: python -m data_pipelines.demo_corpus --out DIR

The command line of ``glmvoice_jax.corpora.demo_corpus``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

from absl import flags

from glmvoice_jax.cli import doors
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
    doors.run(main, __doc__)
