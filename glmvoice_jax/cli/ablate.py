r"""glmvoice-ablate: run a tokenizer sweep end to end and write its report.

Usage:
    glmvoice-ablate --config configs/ablation_bitrates.py[:tiny] --workdir DIR \
        [--config.tokenizer.steps=300]
        [--config.cells.50hz.overrides='("model.codebook_size=1024",)']

Resumable: rerun the same command after a kill and it continues at the first unfinished stage of
the first unfinished cell. Output: DIR/report.md, report.json, report.png, DIR/tensorboard/CELL,
and per cell DIR/cells/CELL/{tokenizer,tokens,corpus,lm,decoder,reconstruction,stages}. See
glmvoice_jax/workflows/ablation.py.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from glmvoice_jax.cli import doors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep config file [:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep workdir.")


def main(argv) -> None:
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines drown the progress
    from glmvoice_jax.workflows import ablation, ablation_report

    results = ablation.Sweep(_CONFIG.value, _WORKDIR.value).run()

    print()
    print(ablation_report.table(results))
    print(f"\nreport: {_WORKDIR.value}/report.md (.json, .png)")


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, required=("config", "workdir"))


if __name__ == "__main__":
    run()
