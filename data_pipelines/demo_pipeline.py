r"""The corpus of ``make demo``: espeak-ng speech + bundled text, through the real jobs.

Usage: python -m data_pipelines.demo_pipeline --workdir runs/demo [--tokenizer_steps 300]

The command line of ``glmvoice_jax.workflows.demo``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

from absl import flags, logging

from glmvoice_jax.cli import doors
from glmvoice_jax.workflows.demo import run


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Demo workdir (make demo: runs/demo).", required=True)
    flags.DEFINE_integer("tokenizer_steps", 300, "Speech-tokenizer training steps.")
    flags.DEFINE_integer("t2t_steps", 100, "Text-to-token model training steps.")
    flags.DEFINE_integer("num_sentences", 0, "Use only the first N espeak sentences (0 = all).")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines drown the progress
    patterns = run(
        f.workdir,
        tokenizer_steps=f.tokenizer_steps,
        t2t_steps=f.t2t_steps,
        max_sentences=f.num_sentences,
    )
    for name, globs in patterns.items():
        print(f"  {name}: {globs}")


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
