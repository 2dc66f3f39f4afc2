r"""glmvoice-data-stats: measure what a config's input pipeline feeds the model.

    glmvoice-data-stats --config configs/NAME.py[:ARGS] [--data_root DIR] [--num_docs 10000]
        [--num_batches 10] [--output stats.json] [--config.a.b=V ...]

Prints per-source document and token shares (measured vs configured ``input.token_shares`` or
weights) with suggested calibrated weights, speech vs text token counts, the interleaving
statistics of the corpus jobs (mean span length, η), the packing fill ratio and the pipeline's
tokens/s. ``--data_root`` replaces "{workdir}" in the configured shard paths (e.g. the demo's run
directory). Library code:
glmvoice_jax/data/stats.py.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from glmvoice_jax.cli import doors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file [:args].", lock_config=True)
_DATA_ROOT = flags.DEFINE_string(
    "data_root", ".", "Replaces {workdir} in the config's shard paths (e.g. runs/demo)."
)
_NUM_DOCS = flags.DEFINE_integer("num_docs", 10_000, "Documents of the mixed stream to read.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 10, "Packed global batches to time.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the statistics as JSON here.")


def main(argv) -> None:
    del argv
    from absl import logging

    from glmvoice_jax.data import stats as data_stats

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    stats = data_stats.compute(
        _CONFIG.value,
        _DATA_ROOT.value,
        num_docs=_NUM_DOCS.value,
        num_batches=_NUM_BATCHES.value,
    )
    print(data_stats.format_report(stats))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(stats, f, indent=1, default=float)


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, required=("config",), renamed={"workdir": "data_root"})


if __name__ == "__main__":
    run()
