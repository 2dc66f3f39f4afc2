"""glmvoice-import for Whisper: a HF Whisper directory -> a weight-only Orbax checkpoint at step 0.

Sources (read by ``convert/whisper.py``, which owns the config rules and the rename table):
``WhisperVQEncoder`` (the GLM-4-Voice tokenizer release, THUDM/glm-4-voice-tokenizer),
``WhisperVQForConditionalGeneration`` and stock ``WhisperForConditionalGeneration`` (e.g.
openai/whisper-large-v3, what the speech-tokenizer trainer starts from).

Checkpoint layout (house_style.md §12; the speech-tokenizer trainer's own items, at step 0):

  <dst>/0/params   the whole ``WhisperVQ`` state as ``nnx.to_pure_dict``: parameters and the VQ
                   EMA buffers (``ema_steps`` = 0), as the trainer saves it
  <dst>/0/meta     {"model_class": "WhisperVQConfig", "model": asdict(config), "tokenizer"?,
                    "extra": {"source": {...}, "token_rate_hz"?, "bitrate_bps"?, "text_prefix"?,
                    "text_eos"?}}
  <dst>/tokenizer  the source's tokenizer and feature-extractor files (``SOURCE_FILES``) as they
                   are, plus ``tokenizer.model``: the tiktoken form of vocab.json that
                   meta["tokenizer"] describes (only when the source has a Whisper text tokenizer)

Readers: ``speech_tokenizer.load_model`` (``glmvoice-tokenize --checkpoint``), the trainer's
``init_from`` (weights; its whisper text side through ``whisper.load_text_tokenizer``) and
``checkpoint.text_tokenizer``. The checkpoint is assembled in a hidden directory next to
``dst`` and renamed into place only when complete, so an error leaves nothing at ``dst``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from glmvoice_jax import checkpoint
from glmvoice_jax.convert.io import safetensors_dir
from glmvoice_jax.convert.whisper import hf_whisper as cw
from glmvoice_jax.models.whisper_vq import WhisperVQConfig

TOKENIZER_DIR = "tokenizer"  # under the checkpoint root, as the GLM importer and the trainer
# Copied when present: what load_text_tokenizer reads, the rest of the HF tokenizer and the
# feature extractor's settings (checked against the log-mel by whisper.check_preprocessor).
SOURCE_FILES = (
    "vocab.json", "merges.txt", "tokenizer.json", "added_tokens.json", "special_tokens_map.json",
    "tokenizer_config.json", "normalizer.json", "preprocessor_config.json",
    "generation_config.json",
)  # fmt: skip


def _source_dtype(hf: dict, src: str) -> str:
    """config.json ``torch_dtype`` (``dtype`` in newer transformers), else the weights' dtype."""
    dt = hf.get("torch_dtype", hf.get("dtype"))
    if dt in safetensors_dir.TORCH_DTYPES:
        return safetensors_dir.TORCH_DTYPES[dt]
    name = str(safetensors_dir.SafetensorsDir(src).dtype("model.encoder.conv1.weight"))
    return name if name in safetensors_dir.TORCH_DTYPES else "float32"


def import_whisper(
    src: str,
    dst: str,
    *,
    add_speech_tokens: int = 0,
    param_dtype: str | None = None,
    seed: int = 0,
) -> dict:
    """Converts a HF Whisper / GLM-4-Voice tokenizer directory into a checkpoint at ``dst``.

    Args:
      src: HF directory: config.json + model.safetensors (or a sharded index), optionally the
        tokenizer / feature-extractor files of ``SOURCE_FILES``.
      dst: checkpoint root to create; must not exist.
      add_speech_tokens: must be 0 (it extends GLM vocabularies; a Whisper model has none).
      param_dtype: stored parameter dtype; default: the source dtype (config.json torch_dtype).
        The VQ EMA statistics stay float32.
      seed: unused (nothing is initialised at random).

    Returns:
      The checkpoint meta that was written.

    Raises:
      FileExistsError: ``dst`` exists.
      FileNotFoundError / ValueError: naming the file, field or tensor at fault (missing weights,
        unknown config fields, missing / unknown tensors, wrong shapes, bad tokenizer files).
    """
    del seed
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    if os.path.exists(dst):
        raise FileExistsError(f"--output {dst} already exists; remove it or choose a new path")
    hf = cw.read_hf_config(src)
    layout = cw.detect_layout(hf)
    if add_speech_tokens:
        raise ValueError(
            f"{src} is a Whisper checkpoint ({layout}): --add_speech_tokens extends the text "
            "vocabulary of a GLM checkpoint and does not apply here (a speech tokenizer's tokens "
            "are its codebook ids); drop it"
        )
    cw.config_from_hf(hf, path=os.path.join(src, "config.json"))  # config errors before weights
    src_dtype = _source_dtype(hf, src)
    cfg, model = cw.load_checkpoint(src, param_dtype=param_dtype or src_dtype)
    files = [f for f in SOURCE_FILES if os.path.isfile(os.path.join(src, f))]
    text_tok = cw.load_text_tokenizer(src) if "vocab.json" in files else None
    if text_tok is not None and cfg.num_decoder_layers and text_tok.vocab_size > cfg.vocab_size:
        raise ValueError(
            f"{src}: the tokenizer files define {text_tok.vocab_size} ids but config.json "
            f"vocab_size is {cfg.vocab_size}; the decoder cannot embed them"
        )
    params = nnx.to_pure_dict(nnx.state(model))
    extra: dict[str, Any] = {
        "source": {
            "format": f"HF {layout} (config.json + safetensors)",
            "architecture": layout,
            "path": src,
            "dtype": src_dtype,
            "num_params": int(
                sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
            ),
            "files": files,
            "hf_config": hf,
        }
    }
    if cfg.quantize_position is not None:
        extra.update(token_rate_hz=cfg.token_rate_hz, bitrate_bps=cfg.bitrate_bps)
    if text_tok is not None:
        extra["text_prefix"] = [text_tok.specials[t] for t in text_tok.prefix]
        extra["text_eos"] = text_tok.specials[cw.WHISPER_EOS]
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.importing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        tok_meta = _write_tokenizer_dir(src, files, text_tok, os.path.join(tmp, TOKENIZER_DIR))
        meta = json.loads(json.dumps(checkpoint.model_meta(cfg, None, tok_meta, extra)))
        checkpoint.write_weights(tmp, params, meta)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _write_tokenizer_dir(src: str, files: list[str], text_tok, tok_dir: str) -> dict | None:
    """Copies the source files; returns meta["tokenizer"] (None without a text tokenizer)."""
    if not files:
        return None
    os.makedirs(tok_dir)
    for f in files:
        shutil.copyfile(os.path.join(src, f), os.path.join(tok_dir, f))
    if text_tok is None:
        return None
    tok_meta = dict(text_tok.save(tok_dir), dir=TOKENIZER_DIR)
    tok_meta["files"] = [*tok_meta["files"], *files]
    return tok_meta


def describe(meta: dict) -> str:
    """One line about an imported WhisperVQ checkpoint (``glmvoice-import`` prints it)."""
    m, extra = meta["model"], meta.get("extra") or {}
    arch = (extra.get("source") or {}).get("architecture", "Whisper")
    layers = f"{m['num_layers']} encoder layers"
    if m["num_decoder_layers"]:
        layers += f" + {m['num_decoder_layers']} decoder layers"
    if m["quantize_position"] is None:
        vq = "no quantizer"
    else:
        rate, bps = extra["token_rate_hz"], extra["bitrate_bps"]
        vq = (
            f"codebook {m['codebook_size']} after layer {m['quantize_position']}: {rate:g} Hz x "
            f"{math.log2(m['codebook_size']):g} bits = {bps:g} bps"
        )
    tok = meta.get("tokenizer")
    text = f"{tok['kind']} text tokenizer" if tok else "no text tokenizer"
    return f"{arch}: {layers}, d={m['embed_dim']}, {vq}, {m['param_dtype']}, {text}"


# ---------------------------------------------------------------------------------------------
# Synthetic HF checkpoints (tests, benchmarks).


def hf_config(cfg: WhisperVQConfig, layout: str) -> dict:
    """The config.json of ``cfg`` in ``layout``; ``whisper.config_from_hf`` reads it back."""
    hf = {
        "architectures": [layout], "model_type": "whisper", "d_model": cfg.embed_dim,
        "encoder_layers": cfg.num_layers, "encoder_attention_heads": cfg.num_heads,
        "encoder_ffn_dim": cfg.mlp_dim, "num_mel_bins": cfg.num_mels,
        "max_source_positions": cfg.max_source_positions, "vocab_size": cfg.vocab_size,
        "decoder_layers": cfg.num_decoder_layers, "decoder_attention_heads": cfg.num_decoder_heads,
        "decoder_ffn_dim": cfg.decoder_mlp_dim, "max_target_positions": cfg.max_target_positions,
        "init_std": cfg.init_std, "activation_function": "gelu", "scale_embedding": False,
        "torch_dtype": "float32",
    }  # fmt: skip
    if layout == cw.STOCK:
        if cfg.quantize_position is not None or cfg.uses_pooling or cfg.use_causal_conv:
            raise ValueError(f"{layout} has no quantizer, pooling or causal convs; cfg has them")
        if cfg.attention_block_size is not None:
            raise ValueError(f"{layout} attention is bidirectional (attention_block_size=None)")
        return hf
    if cfg.quantize_position is None:
        raise ValueError(f"{layout} needs a quantizer (quantize_position)")
    return hf | {
        "pooling_kernel_size": cfg.pooling_kernel if cfg.uses_pooling else None,
        "pooling_type": cfg.pooling_type,
        "pooling_position": cfg.pooling_position if cfg.uses_pooling else 0,
        "quantize_position": cfg.quantize_position,
        "quantize_vocab_size": cfg.codebook_size,
        "quantize_causal_block_size": cfg.attention_block_size,
        "quantize_causal_encoder": False,
        "encoder_causal_convolution": cfg.use_causal_conv,
        "encoder_causal_attention": False,
        "quantize_ema_decay": cfg.ema_decay,
        "quantize_commit_coefficient": cfg.commit_coef,
        "quantize_loss_scale": cfg.vq_loss_scale,
        "quantize_restart_interval": cfg.restart_interval,
        "quantize_encoder_only": False,
    }


def write_synthetic(
    directory: str, cfg: WhisperVQConfig, layout: str, *, seed: int = 0, std: float = 0.05
) -> dict[str, np.ndarray]:
    """Writes a random float32 HF checkpoint (config.json + model.safetensors) of ``cfg``.

    Tensors are N(0, std^2), except the VQ buffers of an EMA codebook, which are consistent as
    in a release (ema_count = 1, ema_weight = codebook). Returns the tensors by HF name.
    """
    hf = hf_config(cfg, layout)
    read = cw.config_from_hf(hf)
    rng = np.random.default_rng(seed)
    tensors = {
        k: (rng.standard_normal(hf_shape) * std).astype(np.float32)
        for k, (_, _, hf_shape, _) in cw.rename_table(read).items()
    }
    if "model.encoder.ema_count" in tensors:
        tensors["model.encoder.ema_count"] = np.ones_like(tensors["model.encoder.ema_count"])
        tensors["model.encoder.ema_weight"] = tensors["model.encoder.codebook.weight"].copy()
    os.makedirs(directory)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf, f, indent=2)
    return tensors
