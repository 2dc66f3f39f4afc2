r"""glmvoice-export: write a project GLM checkpoint as a Hugging Face directory.

Usage:
    glmvoice-export --checkpoint CKPT --output HF_DIR [--format chatglm|transformers] [--dtype
    bfloat16]

Writes safetensors (a single ``model.safetensors``, or 5 GB shards plus
``model.safetensors.index.json``), a ``config.json`` the reference code loads (chatglm: THUDM's
modeling_chatglm.py remote code; transformers: ``GlmForCausalLM``) with pad/eos/bos ids (and the
chat stop ids) from the checkpoint's token layout, a ``generation_config.json``, and the text
tokenizer: the files the checkpoint carries, or for the demo's UTF-8 byte layouts a
``tokenizer.json`` that ``AutoTokenizer`` loads (convert/glm/hf_tokens.py says where no
transformers equivalent exists). A checkpoint imported from HF exports back to identical tensors.
CKPT may be ``gs://...`` (the step that is read is copied to $GLMVOICE_STAGING, without its
optimizer state) and so may HF_DIR (written there, then copied; a rerun after an interrupted
copy copies only the missing files; glmvoice_jax/convert/io/remote.py).

Example (the ``make demo`` model into transformers):
    glmvoice-export --checkpoint runs/demo/checkpoints --output runs/demo/hf --format transformers
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.convert.glm import chatglm, glm_weights, hf_glm
from glmvoice_jax.convert.io import remote, safetensors_dir

FORMATS = {"chatglm": chatglm.FORMAT, "transformers": hf_glm.FORMAT}

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "checkpoint",
    None,
    "Checkpoint (manager root, step directory or training workdir; local or gs://).",
    flag_values=FLAGS,
)
flags.DEFINE_string("output", None, "HF directory to create (local or gs://).", flag_values=FLAGS)
flags.DEFINE_enum("format", "chatglm", list(FORMATS), "Target layout.", flag_values=FLAGS)
flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16", "float16"],
    "Stored dtype (default: the dtype the weights were imported from, else param_dtype).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "max_shard_bytes",
    safetensors_dir.DEFAULT_MAX_SHARD_BYTES,
    "Largest safetensors shard.",
    flag_values=FLAGS,
)


def main(argv: Sequence[str]) -> list[str]:
    """Parses ``argv`` (program name first) and exports. Errors propagate as exceptions."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "output"))
    out, staged = remote.stage_output(FLAGS.output)
    if staged:
        print(f"{FLAGS.output}: exported by an earlier run in {out}; copying what is missing")
        files = sorted(os.listdir(out))
    else:
        files = glm_weights.export_glm(
            remote.local_checkpoint(FLAGS.checkpoint),
            out,
            FORMATS[FLAGS.format],
            dtype=FLAGS.dtype,
            max_shard_bytes=FLAGS.max_shard_bytes,
        )
    if out != FLAGS.output:
        copied, kept = remote.publish(out, FLAGS.output)
        print(f"copied {copied} files to {FLAGS.output} ({kept} were already there)")
    print(f"exported {FLAGS.checkpoint} -> {FLAGS.output} ({FLAGS.format}): {', '.join(files)}")
    if not {"tokenizer.json", "tokenizer.model"} & set(files):
        print(
            f"note: {FLAGS.checkpoint} records no text tokenizer with a transformers equivalent "
            "(convert/glm/hf_tokens.py); clients of the export pass token ids",
            file=sys.stderr,
        )
    return files


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, flag_values=FLAGS)


if __name__ == "__main__":
    run()
