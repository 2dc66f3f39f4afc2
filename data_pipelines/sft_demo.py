r"""The tiny stage-2 SFT demo: dialogues -> SFT of the `make demo` GLM -> before / after figures.

Usage (after `make demo`):
  python -m data_pipelines.sft_demo --demo runs/demo --out runs/sft_demo

The command line of ``glmvoice_jax.workflows.sft_demo`` (which documents the steps and the
figures); prints OUT/report.json's well-formed fraction and answer-text CER, before and after.
"""

from __future__ import annotations

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.workflows import sft_demo


def _define_flags() -> None:
    flags.DEFINE_string("demo", "runs/demo", "Workdir of `make demo` (tiny GLM + tokenizer).")
    flags.DEFINE_string("out", "runs/sft_demo", "Output folder.")
    flags.DEFINE_integer("num_train", 160, "Training dialogues.")
    flags.DEFINE_integer("num_heldout", 16, "Held-out dialogues (unseen adjective-noun pairs).")
    flags.DEFINE_integer("steps", 300, "SFT steps.")
    flags.DEFINE_float("dropout", 0.5, "Hidden dropout of the SFT run.")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    report = sft_demo.run(
        f.demo,
        f.out,
        num_train=f.num_train,
        num_heldout=f.num_heldout,
        steps=f.steps,
        dropout=f.dropout,
    )
    for when in ("before", "after"):
        r = report[when]
        print(
            f"{when} SFT: well-formed {100 * r['well_formed']:.0f}% of "
            f"{report['dialogues']['heldout']} held-out spoken questions, answer-text CER "
            f"{100 * r['answer_cer']:.1f}%"
        )
    print(f"  report: {f.out}/report.json")


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
