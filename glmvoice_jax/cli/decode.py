r"""glmvoice-decode: speech tokens -> 22.05 kHz waveforms with the GLM-4-Voice speech decoder.

Usage:
    glmvoice-decode --checkpoint CKPT --input TOKENS.jsonl --output DIR \
        [--noise zeros] [--save_mel] [--streaming] [--fast]

CKPT: a decoder checkpoint made by glmvoice-import (manager root or step dir) or, for
convenience, the release directory itself (config.yaml + flow.pt + hift.pt).
TOKENS lines: ``{"id": str, "tokens": [int, ...]}`` with codebook indices 0..16383.
Writes ``DIR/<id>.wav`` (float32 WAV, 22050 Hz), with --save_mel ``DIR/<id>.mel.npy`` [80, T],
and ``DIR/errors.jsonl`` (one ``{"line", "id", "error"}`` per skipped line; empty if none).

--noise random (default) draws the flow noise and the NSF phases / noise from --seed and the line
number; --noise zeros is the deterministic mode (zero flow noise, no NSF noise).
--streaming decodes with the GLM-4-Voice web-demo chunk schedule (25, 50, 100, 150, then 200
tokens per chunk; mel cross-fade; vocoder cache), writes each chunk's audio as soon as it exists
and reports the first-chunk latency. Its audio differs slightly from the whole-utterance audio
(docs/decoder_export.md).
--fast decodes with the opt-in fast preset (bf16 matmuls, 5 Euler steps instead of 10; with
--streaming 4 steps and a bounded 25-token history): RTF below 1 on 2 cores, measurably different
audio from the exact default (docs/decoder_speed.md).

Exit status: 0 when every line was decoded; 2 when at least one line was skipped (bad JSON, empty
token list, id outside the codebook, duplicate id, ...; the other lines are still decoded and
the skipped ones are listed in DIR/errors.jsonl); 1 for a usage error or an unreadable
checkpoint / input file (nothing decoded).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.inference import speech_decoding

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "checkpoint",
    None,
    "Decoder checkpoint (manager root or step dir) or a release dir (config.yaml, flow.pt, "
    "hift.pt).",
    flag_values=FLAGS,
)
flags.DEFINE_string("input", None, 'TOKENS.jsonl: lines {"id", "tokens"}.', flag_values=FLAGS)
flags.DEFINE_string("output", None, "Directory for <id>.wav (created).", flag_values=FLAGS)
flags.DEFINE_enum(
    "noise",
    "random",
    list(speech_decoding.NOISE_MODES),
    "random: seeded flow/NSF noise; zeros: deterministic mode.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("seed", 0, "Seed of --noise random.", flag_values=FLAGS)
flags.DEFINE_bool("save_mel", False, "Also write <id>.mel.npy [80, T].", flag_values=FLAGS)
flags.DEFINE_bool(
    "streaming", False, "Decode chunk by chunk like the GLM-4-Voice web demo.", flag_values=FLAGS
)
flags.DEFINE_bool(
    "fast",
    False,
    "Opt-in fast preset: bf16 matmuls, 5 Euler steps (streaming: 4, with a 25-token history).",
    flag_values=FLAGS,
)
flags.DEFINE_bool("progress", True, "One progress line per input line.", flag_values=FLAGS)

EXIT_SOME_LINES_FAILED = 2


def main(argv: Sequence[str]) -> speech_decoding.Report:
    """Parses ``argv`` (program name first) and decodes. Usage errors raise; bad lines do not."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "input", "output"))
    model = decoder_checkpoint.load_any(FLAGS.checkpoint)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = speech_decoding.decode_file(
        model,
        FLAGS.input,
        FLAGS.output,
        noise=FLAGS.noise,
        seed=FLAGS.seed,
        save_mel=FLAGS.save_mel,
        streaming=FLAGS.streaming,
        fast=FLAGS.fast,
        log=log if FLAGS.progress else None,
    )
    print(speech_decoding.summary(report), file=sys.stderr)
    return report


def run() -> None:
    """Console-script entry point: exit 0 all decoded, 2 some lines skipped, 1 user error."""
    doors.run(
        lambda argv: EXIT_SOME_LINES_FAILED if main(argv).errors else 0,
        __doc__,
        flag_values=FLAGS,
    )


if __name__ == "__main__":
    run()
