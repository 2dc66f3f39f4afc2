r"""glmvoice-import: convert a released checkpoint (a directory, a hub repo, a bucket path).

Usage:
    glmvoice-import --checkpoint SRC --output CKPT [--add_speech_tokens 16384] [--dtype
    bfloat16]

SRC is a local directory, a Hugging Face repo (``THUDM/glm-4-9b``, ``hf://ORG/NAME@REVISION``;
downloaded into the hub cache, $HF_HUB_CACHE) or a bucket directory (``gs://...``, copied to
$GLMVOICE_STAGING first). CKPT may be ``gs://...``: the checkpoint is written under
$GLMVOICE_STAGING, then copied, commit markers last; a rerun after an interrupted copy copies only
the missing files (glmvoice_jax/convert/io/remote.py).

Example (the base model of GLM-4-Voice-9B, with the speech vocabulary, onto a bucket):
    glmvoice-import --checkpoint THUDM/glm-4-9b --output gs://BUCKET/glm-4-9b-speech \
        --add_speech_tokens 16384

The source kind is detected from ``config.json`` ``architectures`` (house_style.md §12):
ChatGLM* -> chatglm layout, GlmForCausalLM -> transformers layout, WhisperVQEncoder (the
GLM-4-Voice tokenizer release), WhisperVQForConditionalGeneration and
WhisperForConditionalGeneration -> convert/whisper_import.py; a directory with config.yaml,
flow.pt and hift.pt is the speech decoder. The result is a weight-only Orbax checkpoint at step 0
(params + meta, plus the tokenizer files when the source has them), assembled next to the
(staged) output and renamed into place at the end.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

from absl import flags

from glmvoice_jax import checkpoint
from glmvoice_jax.cli import doors
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.convert.glm import chatglm, glm_weights, hf_glm
from glmvoice_jax.convert.io import remote, safetensors_dir
from glmvoice_jax.convert.whisper import hf_whisper, whisper_import

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    "checkpoint",
    None,
    "Source: a directory (config.json + safetensors), a hub repo id (ORG/NAME, hf://ORG/NAME@REV) "
    "or a gs:// directory.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "output", None, "Checkpoint directory to create (local or gs://).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "add_speech_tokens",
    0,
    "Append <|begin_of_audio|>, <|end_of_audio|> and this many <|audio_k|> tokens "
    "(16384 for GLM-4-Voice; see glmvoice_jax/convert/glm/speech_vocab.py).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16", "float16"],
    "Stored parameter dtype (default: the source dtype; GLM and Whisper checkpoints only).",
    flag_values=FLAGS,
)
flags.DEFINE_integer("seed", 0, "Seed of the new-row initialisation.", flag_values=FLAGS)
flags.DEFINE_bool(
    "allow_nonfinite",
    False,
    "Import tensors that hold NaN or inf (refused by default, naming the tensor and file).",
    flag_values=FLAGS,
)

Importer = Callable[..., dict]

# config.json "architectures" value -> importer(src, dst, *, add_speech_tokens, param_dtype, seed).
IMPORTERS: dict[str, Importer] = {
    "ChatGLMModel": functools.partial(glm_weights.import_glm, fmt=chatglm.FORMAT),
    "ChatGLMForConditionalGeneration": functools.partial(
        glm_weights.import_glm, fmt=chatglm.FORMAT
    ),
    "GlmForCausalLM": functools.partial(glm_weights.import_glm, fmt=hf_glm.FORMAT),
    **{arch: whisper_import.import_whisper for arch in hf_whisper.ARCHITECTURES},
}


def _import_decoder(src, dst, *, add_speech_tokens=0, param_dtype=None, seed=0) -> dict:
    """The glm-4-voice-decoder release layout (config.yaml, flow.pt, hift.pt), as released."""
    del seed
    if add_speech_tokens or param_dtype not in (None, "float32"):
        raise ValueError(
            f"{src} is a speech-decoder directory: --add_speech_tokens and --dtype apply to "
            "GLM checkpoints only (--dtype also to Whisper ones); drop them"
        )
    return decoder_checkpoint.import_decoder(src, dst)


IMPORTERS["decoder"] = _import_decoder
DECODER_FILES = ("config.yaml", "flow.pt", "hift.pt")


def detect(src: str) -> str:
    """The source kind: a config.json architecture, or "decoder" for a CosyVoice-style dir.

    Raises:
      FileNotFoundError / ValueError: naming the directory or file and what was expected.
    """
    if not os.path.isdir(src):
        raise FileNotFoundError(f"--checkpoint {src} is not a directory")
    cfg_path = os.path.join(src, safetensors_dir.CONFIG_FILE)
    if not os.path.exists(cfg_path):
        if all(os.path.exists(os.path.join(src, f)) for f in DECODER_FILES):
            return "decoder"
        raise FileNotFoundError(
            f"{cfg_path} does not exist; --checkpoint must be a checkpoint directory with "
            "config.json "
            f"(or a decoder directory with {', '.join(DECODER_FILES)})"
        )
    arch = safetensors_dir.read_json(cfg_path).get("architectures")
    if not isinstance(arch, list) or not arch:
        raise ValueError(f"{cfg_path}: field 'architectures' is missing or not a list")
    known = [a for a in arch if a in IMPORTERS]
    if not known:
        raise ValueError(
            f"{cfg_path}: architectures = {arch} is not supported; supported: {sorted(IMPORTERS)}"
        )
    return known[0]


def import_checkpoint(
    src: str, dst: str, *, add_speech_tokens: int = 0, param_dtype: str | None = None, seed: int = 0
) -> dict:
    """Detects the kind of ``src`` and runs its importer. Returns the checkpoint meta."""
    kind = detect(src)
    return IMPORTERS[kind](
        src, dst, add_speech_tokens=add_speech_tokens, param_dtype=param_dtype, seed=seed
    )


def main(argv: Sequence[str]) -> dict:
    """Parses ``argv`` (program name first) and imports. Errors propagate as exceptions."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint", "output"))
    out, staged = remote.stage_output(FLAGS.output)
    if staged:
        print(f"{FLAGS.output}: converted by an earlier run in {out}; copying what is missing")
        meta = checkpoint.read_meta(out)
    else:
        src = remote.local_source(FLAGS.checkpoint)
        with safetensors_dir.allow_nonfinite(FLAGS.allow_nonfinite):
            meta = import_checkpoint(
                src,
                out,
                add_speech_tokens=FLAGS.add_speech_tokens,
                param_dtype=FLAGS.dtype,
                seed=FLAGS.seed,
            )
    if out != FLAGS.output:
        copied, kept = remote.publish(out, FLAGS.output)
        print(f"copied {copied} files to {FLAGS.output} ({kept} were already there)")
    m = meta["model"]
    if meta["model_class"] == "GLMConfig":
        print(
            f"imported {FLAGS.checkpoint} -> {FLAGS.output}: {meta['model_class']} "
            f"{m['num_layers']} "
            f"layers, d={m['embed_dim']}, vocab {m['vocab_size']}, {m['param_dtype']}, token "
            f"layout {meta['token_layout']['name']}"
        )
    elif meta["model_class"] == "WhisperVQConfig":
        print(f"imported {FLAGS.checkpoint} -> {FLAGS.output}: {whisper_import.describe(meta)}")
    else:
        print(f"imported {FLAGS.checkpoint} -> {FLAGS.output}: {meta['model_class']}")
    return meta


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, flag_values=FLAGS)


if __name__ == "__main__":
    run()
