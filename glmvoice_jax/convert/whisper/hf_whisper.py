"""Import HF Whisper checkpoints (config.json + safetensors) into ``WhisperVQ``.

Layouts, chosen by ``config.json`` ``architectures`` (glm4voice.md §2.11-2.12, §13):

* ``WhisperVQEncoder``: the GLM-4-Voice tokenizer release (THUDM/glm-4-voice-tokenizer). Keys
  ``model.encoder.*``: the whole 32-layer encoder, ``layer_norm``, ``codebook.weight``,
  ``embed_positions2.weight`` and the EMA buffers ``ema_count`` / ``ema_weight``. No decoder
  weights, so the model is built encoder-only (``num_decoder_layers=0``).
* ``WhisperVQForConditionalGeneration``: the reference ASR training model: the same encoder plus
  ``model.decoder.*`` (and optionally the tied ``proj_out.weight``).
* ``WhisperForConditionalGeneration``: stock Whisper (e.g. openai/whisper-large-v3): encoder and
  decoder, no pooling, no VQ, bidirectional attention, symmetric convs.

Layout rules (one table, ``_encoder_table`` / ``_decoder_table``): Linear W(out, in) -> kernel W.T,
then split into heads where the kernel has a head axis; Conv1d W(out, in, k) -> kernel (k, in, out);
LayerNorm weight -> scale. Every checkpoint key must be consumed and every model variable filled;
otherwise the error lists the offending names. config.json fields that are neither read nor listed
in ``IGNORED_FIELDS`` are an error too. JSON and safetensors are read as data only.

``glmvoice-import`` turns such a directory into a project checkpoint (``whisper_import.py``);
``load_text_tokenizer`` reads the Whisper text tokenizer from either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax import checkpoint
from glmvoice_jax.convert.io import safetensors_dir
from glmvoice_jax.data import text_tokenizer
from glmvoice_jax.models.whisper_vq import WhisperVQ, WhisperVQConfig

VQ_ENCODER = "WhisperVQEncoder"
VQ_ASR = "WhisperVQForConditionalGeneration"
STOCK = "WhisperForConditionalGeneration"
ARCHITECTURES = (VQ_ENCODER, VQ_ASR, STOCK)

# Training-only fields whose released values are unknown (glm4voice.md §2.11, §12 #1-#2). When
# config.json lacks them (or holds null) the *project* defaults apply, not the reference code's.
PROJECT_LOSS_SCALE = 40.0
PROJECT_RESTART_INTERVAL = 100

# Fields that define the tokenizer's forward pass: they must be present in a VQ config.json,
# because the reference code defaults (pooling_type "max", pooling_position 0, no causal flags)
# describe a different model than the release.
_REQUIRED_VQ_FIELDS = (
    "pooling_kernel_size", "pooling_type", "pooling_position", "quantize_position",
    "quantize_vocab_size", "quantize_causal_block_size", "quantize_causal_encoder",
    "encoder_causal_convolution", "encoder_causal_attention", "quantize_ema_decay",
    "quantize_commit_coefficient",
)  # fmt: skip
_REQUIRED_FIELDS = (
    "d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "num_mel_bins",
    "max_source_positions", "vocab_size", "decoder_layers", "decoder_attention_heads",
    "decoder_ffn_dim", "max_target_positions",
)  # fmt: skip
# Every other config.json field must be one of these, or the import stops (an unknown field may
# change the forward pass). Read: the fields above plus the optional ones below. Accepted without
# effect: training-time regularisation (no dropout / SpecAugment in the imported weights), heads
# that are not imported, generation settings and HF bookkeeping. Keys starting with "_" are HF
# private bookkeeping and always accepted.
_OPTIONAL_FIELDS = (
    "architectures", "init_std", "activation_function", "scale_embedding", "quantize_loss_scale",
    "quantize_restart_interval",
)  # fmt: skip
IGNORED_FIELDS = frozenset((
    # training regularisation
    "dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop", "decoder_layerdrop",
    "apply_spec_augment", "mask_time_prob", "mask_time_length", "mask_time_min_masks",
    "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks", "gradient_checkpointing",
    # heads and reference-inference switches (the project builds all layers either way)
    "use_weighted_layer_sum", "classifier_proj_size", "quantize_encoder_only",
    "skip_language_detection", "tie_word_embeddings",  # proj_out is checked against the embedding
    # generation
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "begin_suppress_tokens", "suppress_tokens", "forced_decoder_ids", "max_length", "min_length",
    "median_filter_width", "use_cache", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty",
    # bookkeeping (transformers PretrainedConfig)
    "model_type", "transformers_version", "torch_dtype", "dtype", "is_encoder_decoder",
    "num_hidden_layers", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward", "is_decoder",
    "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder", "finetuning_task",
    "id2label", "label2id", "tokenizer_class", "prefix", "task_specific_params", "problem_type",
))  # fmt: skip


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
    """A HF checkpoint dir: config.json and safetensors (a training workdir has no weights)."""
    files = ("model.safetensors", "model.safetensors.index.json")
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, f)) for f in files
    )


def read_hf_config(src: str | os.PathLike) -> dict[str, Any]:
    """Parses ``src/config.json`` (data only)."""
    path = os.path.join(os.fspath(src), "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{src!r} has no config.json; expected a HF Whisper checkpoint directory")
    with open(path, encoding="utf-8") as f:
        hf = json.load(f)
    if not isinstance(hf, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(hf).__name__}")
    return hf


def detect_layout(hf: Mapping[str, Any]) -> str:
    """The architecture name from config.json ``architectures``; errors for unsupported ones."""
    archs = hf.get("architectures") or []
    found = [a for a in archs if a in ARCHITECTURES]
    if len(found) != 1:
        raise ValueError(
            f"config.json architectures {archs} is not one supported Whisper layout; supported: "
            f"{list(ARCHITECTURES)} (GLM-4 / GLM-4-Voice-9B checkpoints use another importer)"
        )
    return found[0]


def config_from_hf(
    hf: Mapping[str, Any], *, param_dtype: str = "float32", path: str = "config.json"
) -> WhisperVQConfig:
    """Builds the WhisperVQConfig described by a HF config.json.

    Forward-pass fields are read from the file and must be present (see ``_REQUIRED_VQ_FIELDS``);
    only ``quantize_loss_scale`` and ``quantize_restart_interval`` fall back to the project
    defaults (40 and 100) when absent or null. Fields that are neither read nor known to be
    harmless (``IGNORED_FIELDS``) are an error.

    Args:
      hf: the parsed config.json.
      param_dtype: the model's parameter dtype.
      path: the file, for error messages.

    Raises:
      ValueError: unsupported architecture or settings, missing or unknown fields (all listed).
    """
    layout = detect_layout(hf)
    required = _REQUIRED_FIELDS + (_REQUIRED_VQ_FIELDS if layout != STOCK else ())
    missing = [k for k in required if k not in hf]
    if missing:
        raise ValueError(
            f"{path} ({layout}) lacks {missing}; they define the model and have no safe "
            "default (the reference code defaults describe a different model); add them"
        )
    known = {*_REQUIRED_FIELDS, *_REQUIRED_VQ_FIELDS, *_OPTIONAL_FIELDS, *IGNORED_FIELDS}
    unknown = sorted(k for k in hf if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(
            f"{path} ({layout}) has unknown fields {unknown}: the importer does not know whether "
            "they change the model. If they only concern training or generation, add them to "
            "glmvoice_jax/convert/whisper/hf_whisper.py IGNORED_FIELDS (or drop them from a copy "
            "of the "
            "directory); otherwise the model needs to support them first"
        )
    if hf.get("activation_function", "gelu") != "gelu":
        raise ValueError(f"activation_function {hf['activation_function']!r}: only 'gelu' is built")
    if hf.get("scale_embedding", False):
        raise ValueError("scale_embedding=true is not supported (Whisper checkpoints use false)")
    dims = dict(
        num_mels=int(hf["num_mel_bins"]),
        embed_dim=int(hf["d_model"]),
        num_heads=int(hf["encoder_attention_heads"]),
        mlp_dim=int(hf["encoder_ffn_dim"]),
        num_layers=int(hf["encoder_layers"]),
        max_source_positions=int(hf["max_source_positions"]),
        vocab_size=int(hf["vocab_size"]),
        num_decoder_layers=0 if layout == VQ_ENCODER else int(hf["decoder_layers"]),
        num_decoder_heads=int(hf["decoder_attention_heads"]),
        decoder_mlp_dim=int(hf["decoder_ffn_dim"]),
        max_target_positions=int(hf["max_target_positions"]),
        init_std=float(hf.get("init_std", 0.02)),
        param_dtype=param_dtype,
    )
    if layout == STOCK:
        return WhisperVQConfig(
            **dims,
            use_causal_conv=False,
            attention_block_size=None,
            pooling_kernel=1,
            pooling_position=None,
            quantize_position=None,
        )
    if hf["quantize_causal_encoder"]:
        raise ValueError(
            "quantize_causal_encoder=true (causal attention only before the quantizer) is not "
            "supported; the released tokenizer has false"
        )
    if hf["quantize_vocab_size"] is None or hf["quantize_position"] is None:
        raise ValueError("quantize_vocab_size and quantize_position must be set for a VQ layout")
    block = hf["quantize_causal_block_size"]
    if hf["encoder_causal_attention"]:
        block = 1  # causal AND block-causal = causal
    kernel = int(hf["pooling_kernel_size"] or 1)
    loss_scale = hf.get("quantize_loss_scale")
    restart = hf.get("quantize_restart_interval")
    ema = hf["quantize_ema_decay"]
    return WhisperVQConfig(
        **dims,
        use_causal_conv=bool(hf["encoder_causal_convolution"]),
        attention_block_size=None if block is None else int(block),
        pooling_kernel=kernel,
        pooling_position=int(hf["pooling_position"]) if kernel > 1 else None,
        pooling_type=str(hf["pooling_type"]),
        quantize_position=int(hf["quantize_position"]),
        codebook_size=int(hf["quantize_vocab_size"]),
        ema_decay=None if ema is None else float(ema),
        commit_coef=float(hf["quantize_commit_coefficient"]),
        vq_loss_scale=PROJECT_LOSS_SCALE if loss_scale is None else float(loss_scale),
        restart_interval=PROJECT_RESTART_INTERVAL if restart is None else int(restart),
    )


# The log-mel front end (audio.py) is fixed; a feature extractor with other settings would feed
# the model features it was not trained on.
_PREPROCESSOR = {"sampling_rate": 16000, "hop_length": 160, "n_fft": 400}


def check_preprocessor(src: str | os.PathLike, cfg: WhisperVQConfig) -> None:
    """Checks ``preprocessor_config.json`` (when present) against the project's log-mel.

    Raises:
      ValueError: naming the file and the fields whose values differ.
    """
    path = os.path.join(os.fspath(src), "preprocessor_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        pre = json.load(f)
    want = dict(_PREPROCESSOR, feature_size=cfg.num_mels)
    bad = {k: pre[k] for k, v in want.items() if k in pre and pre[k] != v}
    if bad:
        raise ValueError(
            f"{path}: {bad} differ from the log-mel this project computes ({want}); the "
            "checkpoint expects other features"
        )


# --- The rename table ------------------------------------------------------------------------
# Each entry: HF key -> (model path, kind, HF shape, model shape). Kinds: "linear" W(out, in) ->
# W.T reshaped; "conv" W(out, in, k) -> (k, in, out); "array" reshaped as is.


def _attention_table(hf: str, ours: tuple, d: int, n: int) -> dict:
    h = d // n
    return {
        f"{hf}.q_proj.weight": (ours + ("q_proj", "kernel"), "linear", (d, d), (d, n, h)),
        f"{hf}.q_proj.bias": (ours + ("q_proj", "bias"), "array", (d,), (n, h)),
        f"{hf}.k_proj.weight": (ours + ("k_proj", "kernel"), "linear", (d, d), (d, n, h)),
        f"{hf}.v_proj.weight": (ours + ("v_proj", "kernel"), "linear", (d, d), (d, n, h)),
        f"{hf}.v_proj.bias": (ours + ("v_proj", "bias"), "array", (d,), (n, h)),
        f"{hf}.out_proj.weight": (ours + ("out_proj", "kernel"), "linear", (d, d), (n, h, d)),
        f"{hf}.out_proj.bias": (ours + ("out_proj", "bias"), "array", (d,), (d,)),
    }


def _norm_table(hf: str, ours: tuple, d: int) -> dict:
    return {
        f"{hf}.weight": (ours + ("scale",), "array", (d,), (d,)),
        f"{hf}.bias": (ours + ("bias",), "array", (d,), (d,)),
    }


def _mlp_table(hf: str, ours: tuple, d: int, f: int) -> dict:
    return {
        f"{hf}.fc1.weight": (ours + ("fc1", "kernel"), "linear", (f, d), (d, f)),
        f"{hf}.fc1.bias": (ours + ("fc1", "bias"), "array", (f,), (f,)),
        f"{hf}.fc2.weight": (ours + ("fc2", "kernel"), "linear", (d, f), (f, d)),
        f"{hf}.fc2.bias": (ours + ("fc2", "bias"), "array", (d,), (d,)),
    }


def _encoder_table(cfg: WhisperVQConfig) -> dict:
    d, m, p = cfg.embed_dim, cfg.num_mels, cfg.max_source_positions
    hf, enc = "model.encoder", ("encoder",)
    table = {
        f"{hf}.conv1.weight": (enc + ("conv1", "kernel"), "conv", (d, m, 3), (3, m, d)),
        f"{hf}.conv1.bias": (enc + ("conv1", "bias"), "array", (d,), (d,)),
        f"{hf}.conv2.weight": (enc + ("conv2", "kernel"), "conv", (d, d, 3), (3, d, d)),
        f"{hf}.conv2.bias": (enc + ("conv2", "bias"), "array", (d,), (d,)),
        f"{hf}.embed_positions.weight": (enc + ("embed_positions",), "array", (p, d), (p, d)),
        **_norm_table(f"{hf}.layer_norm", enc + ("layer_norm",), d),
    }
    for i in range(cfg.num_layers):
        lhf, lours = f"{hf}.layers.{i}", enc + ("layers", i)
        table.update(_attention_table(f"{lhf}.self_attn", lours + ("self_attn",), d, cfg.num_heads))
        table.update(
            _norm_table(f"{lhf}.self_attn_layer_norm", lours + ("self_attn_layer_norm",), d)
        )
        table.update(_mlp_table(lhf, lours, d, cfg.mlp_dim))
        table.update(_norm_table(f"{lhf}.final_layer_norm", lours + ("final_layer_norm",), d))
    if cfg.quantize_position is not None:
        c, rows = cfg.codebook_size, -(-p // cfg.pooling_kernel)
        vq = enc + ("quantizer",)
        table[f"{hf}.codebook.weight"] = (vq + ("codebook",), "array", (c, d), (c, d))
        table[f"{hf}.embed_positions2.weight"] = (
            enc + ("embed_positions2",), "array", (rows, d), (rows, d)
        )  # fmt: skip
        if cfg.ema_decay is not None:
            table[f"{hf}.ema_count"] = (vq + ("ema_count",), "array", (c,), (c,))
            table[f"{hf}.ema_weight"] = (vq + ("ema_weight",), "array", (c, d), (c, d))
    return table


def _decoder_table(cfg: WhisperVQConfig) -> dict:
    d, v, p = cfg.embed_dim, cfg.vocab_size, cfg.max_target_positions
    hf, dec = "model.decoder", ("decoder",)
    table = {
        f"{hf}.embed_tokens.weight": (dec + ("embed_tokens",), "array", (v, d), (v, d)),
        f"{hf}.embed_positions.weight": (dec + ("embed_positions",), "array", (p, d), (p, d)),
        **_norm_table(f"{hf}.layer_norm", dec + ("layer_norm",), d),
    }
    n = cfg.num_decoder_heads
    for i in range(cfg.num_decoder_layers):
        lhf, lours = f"{hf}.layers.{i}", dec + ("layers", i)
        table.update(_attention_table(f"{lhf}.self_attn", lours + ("self_attn",), d, n))
        table.update(
            _norm_table(f"{lhf}.self_attn_layer_norm", lours + ("self_attn_layer_norm",), d)
        )
        table.update(_attention_table(f"{lhf}.encoder_attn", lours + ("encoder_attn",), d, n))
        table.update(
            _norm_table(f"{lhf}.encoder_attn_layer_norm", lours + ("encoder_attn_layer_norm",), d)
        )
        table.update(_mlp_table(lhf, lours, d, cfg.decoder_mlp_dim))
        table.update(_norm_table(f"{lhf}.final_layer_norm", lours + ("final_layer_norm",), d))
    return table


def rename_table(cfg: WhisperVQConfig) -> dict[str, tuple[tuple, str, tuple, tuple]]:
    """HF key -> (model variable path, kind, HF shape, model shape) for this config."""
    table = _encoder_table(cfg)
    if cfg.num_decoder_layers:
        table.update(_decoder_table(cfg))
    return table


# --- Reading -----------------------------------------------------------------------------------


def read_safetensors(src: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` or of the shards its index names, as numpy arrays.

    Read through ``convert/io/safetensors_dir.SafetensorsDir``, the one safetensors reader (its
    checks: shard names inside the directory, no tensor in two shards, missing shards named).
    """
    st = safetensors_dir.SafetensorsDir(os.fspath(src))
    return {name: st.read(name) for name in st.keys()}  # noqa: SIM118 (not a Mapping)


def _convert(value: np.ndarray, kind: str, ours: tuple) -> np.ndarray:
    if kind == "linear":
        return value.T.reshape(ours)
    if kind == "conv":
        return value.transpose(2, 1, 0)
    return value.reshape(ours)


def convert_tensors(
    cfg: WhisperVQConfig, tensors: Mapping[str, np.ndarray], *, where: str = "checkpoint"
) -> dict[tuple, np.ndarray]:
    """Maps HF tensors to model variable paths through ``rename_table``.

    ``where`` names the source in errors (e.g. the directory).

    Raises:
      ValueError: listing every missing key, unknown key and wrong shape together.
    """
    table = rename_table(cfg)
    extra = dict(tensors)
    tied = extra.pop("proj_out.weight", None)  # tied to the token embedding in Whisper
    missing = sorted(set(table) - set(extra))
    unknown = sorted(set(extra) - set(table))
    wrong = [
        f"{k}: {tuple(extra[k].shape)} (expected {table[k][2]})"
        for k in sorted(set(table) & set(extra))
        if tuple(extra[k].shape) != table[k][2]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if wrong:
        problems.append(f"wrong shapes {wrong}")
    if tied is not None:
        emb = extra.get("model.decoder.embed_tokens.weight")
        if emb is None or tied.shape != emb.shape or not np.array_equal(tied, emb):
            problems.append("proj_out.weight differs from model.decoder.embed_tokens.weight")
    if problems:
        raise ValueError(
            f"{where} does not match the model described by its config.json: " + "; ".join(problems)
        )
    return {
        ours: _convert(np.asarray(extra[k]), kind, shp) for k, (ours, kind, _, shp) in table.items()
    }


def load_checkpoint(
    src: str | os.PathLike, *, param_dtype: str = "float32"
) -> tuple[WhisperVQConfig, WhisperVQ]:
    """Imports a HF Whisper / GLM-4-Voice tokenizer directory.

    Args:
      src: directory with config.json and model.safetensors (or a sharded index).
      param_dtype: dtype of the model's parameters (checkpoint tensors are cast to it; the EMA
        statistics stay float32).

    Returns:
      (config, model) with every variable filled from the checkpoint (the VQ step counter is 0).

    Raises:
      ValueError: unsupported architecture, missing config fields, missing/unknown keys or wrong
        shapes (each listed).
    """
    cfg = config_from_hf(
        read_hf_config(src), param_dtype=param_dtype, path=os.path.join(src, "config.json")
    )
    check_preprocessor(src, cfg)
    converted = convert_tensors(cfg, read_safetensors(src), where=os.fspath(src))
    abs_model = nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0)))
    graphdef, abs_state = nnx.split(abs_model)
    pure = nnx.to_pure_dict(abs_state)
    filled = set()

    def fill(node: dict, path: tuple) -> None:
        for key, value in node.items():
            here = path + (key,)
            if isinstance(value, dict):
                fill(value, here)
            elif here in converted:  # popped: host copies are freed as the model fills
                node[key] = jnp.asarray(converted.pop(here), value.dtype)
                filled.add(here)
            elif here == ("encoder", "quantizer", "ema_steps"):
                node[key] = jnp.zeros(value.shape, value.dtype)
            else:
                raise AssertionError(f"model variable {here} has no entry in the rename table")

    fill(pure, ())
    unused = sorted(converted)
    if unused:
        raise AssertionError(f"rename table targets {unused} that the model does not have")
    nnx.replace_by_pure_dict(abs_state, pure)
    return cfg, nnx.merge(graphdef, abs_state)


# --- The Whisper text tokenizer ------------------------------------------------------------------

# GPT-2's pre-tokenizer regex, which Whisper's byte-level BPE uses.
WHISPER_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# English transcription without timestamps: what the ASR training targets follow.
WHISPER_PREFIX = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
WHISPER_EOS = "<|endoftext|>"


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character alias of each byte, inverted (char -> byte)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def _added_tokens(src: str) -> dict[str, int]:
    found: dict[str, int] = {}
    path = os.path.join(src, "added_tokens.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            found.update({str(k): int(v) for k, v in json.load(f).items()})
    path = os.path.join(src, "tokenizer_config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            decoder = json.load(f).get("added_tokens_decoder") or {}
        found.update({v["content"]: int(k) for k, v in decoder.items() if isinstance(v, dict)})
    path = os.path.join(src, "tokenizer.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            added = json.load(f).get("added_tokens") or []
        found.update({t["content"]: int(t["id"]) for t in added if isinstance(t, dict)})
    return found


def _checkpoint_text_tokenizer(src: str):
    """The Whisper tokenizer that a project checkpoint records, or None if ``src`` is not one."""
    try:
        checkpoint.resolve(src)
    except FileNotFoundError:
        return None
    tok = checkpoint.text_tokenizer(src)
    missing = [t for t in (*WHISPER_PREFIX, WHISPER_EOS) if t not in getattr(tok, "specials", {})]
    if tok is None or missing:
        what = "no text tokenizer" if tok is None else f"a {tok.kind} tokenizer without {missing}"
        raise ValueError(
            f"checkpoint {src!r} records {what}, not Whisper's: import the Whisper checkpoint "
            "together with its tokenizer files (vocab.json + added_tokens.json or "
            "tokenizer_config.json), set text.whisper_dir to a HF Whisper directory, or train "
            "with text.tokenizer='sentencepiece'"
        )
    return tok


def load_text_tokenizer(src: str | os.PathLike):
    """Whisper's byte-level BPE from a HF checkpoint directory, as a ``TiktokenTokenizer``.

    Reads ``vocab.json`` (byte-level BPE: ids are the merge ranks, as in openai/whisper's
    ``.tiktoken`` files) and the added/special tokens (``added_tokens.json``,
    ``tokenizer_config.json`` ``added_tokens_decoder`` or ``tokenizer.json``). ``encode`` prepends
    <|startoftranscript|><|en|><|transcribe|><|notimestamps|>. ``src`` may also be a project
    checkpoint (``glmvoice-import`` of a Whisper directory, a speech-tokenizer run): then the
    tokenizer its meta records is loaded.

    Raises:
      ValueError: missing files, ranks that are not 0..n-1, or missing special tokens.
    """
    src = os.fspath(src)
    path = os.path.join(src, "vocab.json")
    if not os.path.isfile(path):
        tok = _checkpoint_text_tokenizer(src)
        if tok is not None:
            return tok
        raise ValueError(
            f"{src!r} has no vocab.json: the Whisper text tokenizer needs the HF tokenizer files "
            "(vocab.json + added_tokens.json or tokenizer_config.json); copy them from the "
            "checkpoint repository, or train with text.tokenizer='sentencepiece'"
        )
    with open(path, encoding="utf-8") as f:
        vocab = {str(k): int(v) for k, v in json.load(f).items()}
    specials = _added_tokens(src)
    specials.update({t: i for t, i in vocab.items() if t.startswith("<|") and t.endswith("|>")})
    decoder = _byte_decoder()
    ranks = {}
    for token, i in vocab.items():
        if token in specials:
            continue
        try:
            ranks[bytes(decoder[c] for c in token)] = i
        except KeyError:
            raise ValueError(f"{path}: token {token!r} is not byte-level BPE text") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: BPE ids must be 0..{len(ranks) - 1} without gaps")
    missing = [t for t in (*WHISPER_PREFIX, WHISPER_EOS) if t not in specials]
    if missing:
        raise ValueError(f"{src!r}: the tokenizer files lack the special tokens {missing}")
    return text_tokenizer.TiktokenTokenizer(
        ranks, specials, pattern=WHISPER_PATTERN, prefix=WHISPER_PREFIX
    )
