r"""glmvoice-score: per-token log-probabilities of sequences under a GLM checkpoint.

Usage:
    glmvoice-score --checkpoint CKPT --input IN.jsonl --output OUT.jsonl

IN lines: ``{"id"?, "ids": [int, ...]}`` or ``{"id"?, "text": "..."}`` (text needs a checkpoint
with a tokenizer; it is encoded with the tokenizer's prefix, e.g. [gMASK]<sop>).
OUT lines: ``{"id", "logprob", "token_logprobs"}`` with token_logprobs[i-1] = log p(ids[i] |
ids[:i]) in float32 math (glmvoice_jax/inference/scoring.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.inference import scoring

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "Checkpoint (manager root or step dir).", flag_values=FLAGS)
flags.DEFINE_string("input", None, "Input JSONL.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Output JSONL.", flag_values=FLAGS)
flags.DEFINE_integer(
    "max_tokens_per_batch", 16384, "Padded tokens per batch (all devices).", flag_values=FLAGS
)
flags.DEFINE_enum(
    "attention_impl",
    None,
    ["xla", "chunked"],
    "Override the checkpoint's attention implementation (chunked for long sequences).",
    flag_values=FLAGS,
)
flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=FLAGS)


def main(argv: Sequence[str]) -> dict:
    """Parses ``argv`` (program name first) and scores. Errors propagate as exceptions."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "input", "output"))
    stats = scoring.score_file(
        FLAGS.checkpoint,
        FLAGS.input,
        FLAGS.output,
        progress=FLAGS.progress,
        max_tokens_per_batch=FLAGS.max_tokens_per_batch,
        attention_impl=FLAGS.attention_impl,
    )
    rate = stats["tokens"] / max(stats["seconds"], 1e-9)
    print(
        f"scored {stats['sequences']} sequences, {stats['tokens']} tokens in "
        f"{stats['seconds']:.2f} s ({rate:.0f} tokens/s, compile included) -> {FLAGS.output}",
        file=sys.stderr,
    )
    return stats


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, flag_values=FLAGS)


if __name__ == "__main__":
    run()
