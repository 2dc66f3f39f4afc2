r"""glmvoice-ablate: run a tokenizer sweep end to end and write its report.

Usage:
    glmvoice-ablate --sweep configs/ablation_bitrates.py[:tiny] --workdir DIR \
        [--sweep.tokenizer.steps=300] [--sweep.cells.50hz.overrides='("model.codebook_size=1024",)']

Resumable: rerun the same command after a kill and it continues at the first unfinished stage of
the first unfinished cell. Output: DIR/report.md, report.json, report.png, DIR/tensorboard/CELL,
and per cell DIR/cells/CELL/{tokenizer,tokens,corpus,lm,stages}. See glmvoice_jax/workflows/ablation.py.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_SWEEP = config_flags.DEFINE_config_file("sweep", None, "Sweep config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep workdir.")


def main(argv) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines drown the progress
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    from glmvoice_jax.workflows import ablation

    try:
        results = ablation.Sweep(_SWEEP.value, _WORKDIR.value).run()
    except (FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"glmvoice-ablate: error: {e}\n")
        sys.exit(1)
    from glmvoice_jax.workflows import ablation_report

    print()
    print(ablation_report.table(results))
    print(f"\nreport: {_WORKDIR.value}/report.md (.json, .png)")


def run() -> None:
    flags.mark_flags_as_required(["sweep"])
    app.run(main)


if __name__ == "__main__":
    run()
