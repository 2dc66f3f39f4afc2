r"""glmvoice-export: write a project GLM checkpoint as a Hugging Face directory.

Usage:
    glmvoice-export --src CKPT --dst HF_DIR [--format chatglm|transformers] [--dtype bfloat16]

Writes safetensors (a single ``model.safetensors``, or 5 GB shards plus
``model.safetensors.index.json``), a ``config.json`` the reference code loads (chatglm: THUDM's
modeling_chatglm.py remote code; transformers: ``GlmForCausalLM``) and the tokenizer files the
checkpoint carries. A checkpoint imported from HF exports back to identical tensors.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from glmvoice_jax.convert.glm import chatglm, glm_weights, hf_glm
from glmvoice_jax.convert.io import safetensors_dir

FORMATS = {"chatglm": chatglm.FORMAT, "transformers": hf_glm.FORMAT}

FLAGS = flags.FlagValues()
flags.DEFINE_string("src", None, "Checkpoint (manager root or step directory).", flag_values=FLAGS)
flags.DEFINE_string("dst", None, "HF directory to create.", flag_values=FLAGS)
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
    for name in ("src", "dst"):
        if not FLAGS[name].value:
            raise flags.IllegalFlagValueError(f"--{name} is required")
    files = glm_weights.export_glm(
        FLAGS.src,
        FLAGS.dst,
        FORMATS[FLAGS.format],
        dtype=FLAGS.dtype,
        max_shard_bytes=FLAGS.max_shard_bytes,
    )
    print(f"exported {FLAGS.src} -> {FLAGS.dst} ({FLAGS.format}): {', '.join(files)}")
    return files


def run() -> None:
    """Console-script entry point: user errors exit 1 with one line on stderr."""
    try:
        main(sys.argv)
    except (flags.Error, FileExistsError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"glmvoice-export: error: {msg}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
