r"""glmvoice-tokenize: audio files -> GLM-4-Voice speech tokens.

Usage:
    glmvoice-tokenize --checkpoint CKPT --input PATH --output OUT.jsonl
    glmvoice-tokenize --checkpoint CKPT --input PATH --output OUT_DIR --output_format array_record

CKPT: an Orbax checkpoint of the speech-tokenizer trainer (workdir, checkpoints/ or a step dir) or
a HF directory (the released THUDM/glm-4-voice-tokenizer layout). PATH: an audio file, a directory
of them, or a manifest JSONL ``{"id", "audio"}``. Audio is resampled to 16 kHz mono and cut into
30 s windows as the reference does; OUT lines are ``{"id", "tokens"}`` (codebook indices). With
``--output_format array_record``, OUT holds speech-only training examples in the record schema.
Skipped inputs (unreadable, empty, NaN, silent) are listed with the reason in an errors file.
A rerun resumes: finished output parts are not redone. Multi-host: every process does its share
(glmvoice_jax/inference/tokenizing_job.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from glmvoice_jax.cli import doors

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "checkpoint", None, "Tokenizer checkpoint (Orbax or HF dir).", flag_values=FLAGS
)
flags.DEFINE_string("input", None, "Audio file, directory, or manifest JSONL.", flag_values=FLAGS)
flags.DEFINE_string(
    "output", None, "OUT.jsonl, or a directory for array_record.", flag_values=FLAGS
)
flags.DEFINE_enum(
    "output_format", "jsonl", ["jsonl", "array_record"], "Output kind.", flag_values=FLAGS
)
flags.DEFINE_integer("files_per_part", 256, "Inputs per resumable output part.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "30 s windows per batch (all devices).", flag_values=FLAGS)
flags.DEFINE_float(
    "silence_peak", 1e-4, "Skip audio whose peak |amplitude| is below this.", flag_values=FLAGS
)
flags.DEFINE_string(
    "token_layout", "glm4_voice", "Token layout of array_record ids.", flag_values=FLAGS
)
flags.DEFINE_string(
    "source_name", "speech", "Source name in array_record examples.", flag_values=FLAGS
)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().", flag_values=FLAGS)


def main(argv: Sequence[str]) -> dict:
    """Parses ``argv`` (program name first) and tokenizes. Errors propagate as exceptions."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "input", "output"))
    if FLAGS.files_per_part < 1 or FLAGS.batch_size < 1:
        raise flags.IllegalFlagValueError("--files_per_part and --batch_size must be >= 1")
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize()
    from glmvoice_jax.inference import tokenizing_job

    def log(msg: str) -> None:
        if jax.process_index() == 0 or FLAGS.distributed:
            print(f"[process {jax.process_index()}] {msg}", file=sys.stderr, flush=True)

    stats = tokenizing_job.tokenize_files(
        FLAGS.checkpoint,
        FLAGS.input,
        FLAGS.output,
        output_format=FLAGS.output_format,
        files_per_part=FLAGS.files_per_part,
        batch_size=FLAGS.batch_size,
        silence_peak=FLAGS.silence_peak,
        layout_name=FLAGS.token_layout,
        source_name=FLAGS.source_name,
        log=log,
    )
    hours = stats["audio_secs"] / 3600
    log(
        f"done: {stats['files']} files ({hours:.4f} audio-h), {stats['skipped']} skipped, "
        f"{hours / max(stats['seconds'], 1e-9):.2e} audio-h/s incl. compile -> {FLAGS.output}"
    )
    return stats


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, flag_values=FLAGS)


if __name__ == "__main__":
    run()
