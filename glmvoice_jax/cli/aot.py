r"""glmvoice-aot: compile the real sharded train step for a TPU topology on a CPU-only machine.

    glmvoice-aot --config configs/NAME.py[:ARGS] --topology v5p-128 [--config.a.b=V ...]
        [--mfu 0.45] [--output OUT.json]

The step is the one ``glmvoice-train`` runs for ``config.trainer`` (``aot_steps.STEPS``: the LM
trainer's ``lm.jit_train_step``, the speech-tokenizer trainer's step at its widest audio bucket,
or the flow-matching decoder trainer's ``speech_decoder.jit_train_step``, e.g.
``configs/decoder_release.py``), lowered for the topology's devices instead of this machine's.
XLA's TPU compiler (libtpu; ``pip install 'glmvoice_jax[tpu]'``) plans every buffer, so an OOM
shows here before a pod is rented (anchors.md §5). Printed per device: arguments, outputs,
temporaries, code, their total against the chip's HBM; FLOPs per step; the step time implied by a
stated MFU.

Topologies: ``v5p-128`` (TensorCore count, as Cloud TPU names slices), ``v6e-256``, ``v5e-64``,
``v4-32``, ..., an explicit ``v5p:4x4x4``, or ``NxNAME`` for N slices joined by DCN
(``2xv6e-256``). ``--topology cpu`` compiles for this machine's devices instead, and
``--benchmark_steps N`` then also runs N steps on random inputs and reports the step time.

``--serve`` compiles the generation engine's decode step of the config's model instead
(trainers/preflight_serving.py): ``--dtype bfloat16`` or ``--quantize int8`` weights, a KV cache
of ``--batch`` requests (0: the largest batch that fits, searched) x ``--context`` slots; printed:
memory per chip against HBM and the decode rate implied at ``--bandwidth_fraction`` of the chip's
HBM bandwidth (docs/aot.md, "Serving")::

    glmvoice-aot --config configs/glm4_voice_9b_pretrain.py --topology v5e-8 --serve --quantize int8
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from absl import flags
from ml_collections import config_flags

from glmvoice_jax.cli import doors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file [:args].", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "e.g. v5p-128, v6e-256, 2xv6e-256, cpu.")
_MFU = flags.DEFINE_float("mfu", 0.45, "Model FLOPs utilisation for the implied step time.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the report as JSON here.")
_SERVE = flags.DEFINE_bool(
    "serve", False, "Compile the generation engine's decode step instead of the train step."
)
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "--serve: weights dtype.")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", ["none", "int8"], "--serve: weight quantisation.")
_CONTEXT = flags.DEFINE_integer("context", 8192, "--serve: KV-cache slots per request.")
_BATCH = flags.DEFINE_integer("batch", 0, "--serve: requests per step (0: the largest that fits).")
_BW = flags.DEFINE_float(
    "bandwidth_fraction", 0.7, "--serve: fraction of HBM bandwidth for the implied decode rate."
)
_BENCH = flags.DEFINE_integer(
    "benchmark_steps", 0, "--topology cpu only: run this many timed steps after one warm-up."
)


def main(argv) -> None:
    del argv
    # Imported here, not at the top: run() sets JAX's environment first (jax reads it on import).
    from glmvoice_jax.trainers import preflight, preflight_serving

    if _SERVE.value:
        if _TOPOLOGY.value == "cpu":
            doors.fail("--serve compiles for a TPU topology (e.g. --topology v5e-8), not cpu")
        report_ = preflight_serving.report(
            _CONFIG.value, _TOPOLOGY.value, dtype=_DTYPE.value, quantize=_QUANTIZE.value,
            context=_CONTEXT.value, batch=_BATCH.value, bandwidth_fraction=_BW.value,
        )  # fmt: skip
        print(preflight_serving.format_report(report_), flush=True)
    else:
        report_ = preflight.report(_CONFIG.value, _TOPOLOGY.value, _MFU.value, _BENCH.value)
        print(preflight.format_report(report_), flush=True)
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(report_, f, indent=2)
    if not report_["fits"]:
        sys.exit(1)  # a pre-flight check: a step that does not fit fails the command


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    # Compiling for a topology needs libtpu but no TPU: keep JAX's runtime on the CPU and stop
    # libtpu from probing for TPU hosts (jax_stack_notes.md §9.3).
    topology = ""
    for i, a in enumerate(sys.argv):
        if a.startswith("--topology="):
            topology = a.split("=", 1)[1]
        elif a == "--topology" and i + 1 < len(sys.argv):
            topology = sys.argv[i + 1]
    if topology not in ("", "cpu"):
        if importlib.util.find_spec("libtpu") is None:
            doors.fail(
                "compiling for a TPU topology needs libtpu; install it with "
                "pip install 'glmvoice_jax[tpu]' (or pass --topology cpu)"
            )
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
        # AOT never opens a TPU, so it need not hold libtpu's one-process lock (another JAX
        # process on this machine may have taken it just by probing for TPUs).
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    doors.run(main, __doc__, required=("config", "topology"))


if __name__ == "__main__":
    run()
