"""The speech-tokenizer trainer's config: validation, the batch-size check and the run banner.

The defaults live in ``configs/tokenizer_base.py`` (and the four bitrate configs built on it);
``config_lib.tokenizer_model_config`` turns ``config.model`` into the WhisperVQConfig, which
``validate`` builds once per run and returns.
"""

from __future__ import annotations

import math

import jax
import ml_collections as mlc

from glmvoice_jax import config_lib
from glmvoice_jax.models.whisper_vq import WhisperVQConfig
from glmvoice_jax.trainers import loop


def validate(config: mlc.ConfigDict) -> WhisperVQConfig:
    """Checks the config before anything is traced; every error names the field, value and fix.

    Returns:
      The run's WhisperVQConfig (built here once and passed down by ``train`` and glmvoice-aot).

    Raises:
      ValueError: naming the field, its value and the fix.
    """
    need = config_lib.need
    need(
        config.trainer == "speech_tokenizer",
        f"config.trainer is {config.trainer!r}; this validator is for 'speech_tokenizer'",
    )
    loop.check_config(config)
    inp = config.input
    need(inp.global_batch_size > 0, f"input.global_batch_size must be > 0: {inp.global_batch_size}")
    need(
        0 < inp.max_audio_secs <= 30,
        f"input.max_audio_secs ({inp.max_audio_secs}) must be in (0, 30]: the encoder sees at "
        "most one 30 s window",
    )
    need(inp.bucket_secs > 0, f"input.bucket_secs must be > 0, got {inp.bucket_secs}")
    need(
        bool(inp.espeak_corpus_dir) or (bool(inp.train_manifest) and bool(inp.heldout_manifest)),
        "set input.espeak_corpus_dir, or both input.train_manifest and input.heldout_manifest",
    )
    need(
        config.text.tokenizer in ("sentencepiece", "whisper"),
        f"text.tokenizer must be 'sentencepiece' or 'whisper', got {config.text.tokenizer!r}",
    )
    if config.text.tokenizer == "sentencepiece":
        need(
            config.text.vocab_size >= 300,
            f"text.vocab_size ({config.text.vocab_size}) must be >= 300: the sentencepiece model "
            "keeps 256 byte pieces and 4 control ids besides the characters",
        )
    model_cfg = config_lib.tokenizer_model_config(config)  # raises on a bad variant / value
    need(
        model_cfg.quantize_position is not None and model_cfg.num_decoder_layers > 0,
        "the speech-tokenizer trainer needs a quantizer (model.quantize_position) and a decoder "
        "(model.num_decoder_layers > 0)",
    )
    if config.text.tokenizer == "sentencepiece":
        need(
            config.text.vocab_size <= model_cfg.vocab_size,
            f"text.vocab_size ({config.text.vocab_size}) exceeds model.vocab_size "
            f"({model_cfg.vocab_size}); make them equal",
        )
    need(
        2 <= inp.max_text_tokens <= model_cfg.max_target_positions,
        f"input.max_text_tokens ({inp.max_text_tokens}) must be in [2, "
        f"max_target_positions={model_cfg.max_target_positions}]",
    )
    _validate_evals_and_regularisers(config, model_cfg)
    return model_cfg


def _validate_evals_and_regularisers(config: mlc.ConfigDict, model_cfg: WhisperVQConfig) -> None:
    need = config_lib.need
    need(
        config.evals.every_steps >= 0 and config.evals.batch_size > 0,
        f"evals.every_steps ({config.evals.every_steps}) must be >= 0 (0 = off) and "
        f"evals.batch_size ({config.evals.batch_size}) > 0",
    )
    need(
        config.evals.max_new_tokens + 4 <= model_cfg.max_target_positions,
        f"evals.max_new_tokens ({config.evals.max_new_tokens}) + the prefix must fit "
        f"max_target_positions ({model_cfg.max_target_positions})",
    )
    init = config.vq.codebook_init
    need(
        init in ("data", "random") or str(init).endswith(".npy"),
        f"vq.codebook_init must be 'data', 'random' or a .npy path, got {init!r}",
    )
    need(config.vq.usage_window_steps >= 1, "vq.usage_window_steps must be >= 1")
    aug = config.augment
    need(
        min(aug.freq_masks, aug.freq_width, aug.time_masks, aug.time_width) >= 0
        and 0.0 <= aug.time_frac <= 1.0,
        f"augment counts and widths must be >= 0 and augment.time_frac in [0, 1]; got {aug}",
    )
    need(
        0.0 <= config.loss.label_smoothing < 1.0,
        f"loss.label_smoothing ({config.loss.label_smoothing}) must be in [0, 1)",
    )


def check_batch_sizes(config: mlc.ConfigDict, dp: int) -> None:
    """Raises unless the train and eval batches split over ``dp`` shards and the processes."""
    for name, size in (
        ("input.global_batch_size", config.input.global_batch_size),
        ("evals.batch_size", config.evals.batch_size),
    ):
        if size % dp or size % jax.process_count():
            raise ValueError(
                f"{name} ({size}) must be divisible by the data-parallel shards ({dp} = mesh "
                f"data x fsdp) and the process count ({jax.process_count()}); use a multiple "
                f"of {math.lcm(dp, jax.process_count())}"
            )


def banner(config: mlc.ConfigDict, cfg: WhisperVQConfig) -> str:
    """Two lines: the model's shape and its bitrate (printed at start and by the sweep)."""
    pool = (
        f"avg-pool x{cfg.pooling_kernel} after layer {cfg.pooling_position}"
        if cfg.uses_pooling
        else "no pooling"
    )
    return (
        f"speech tokenizer {config.model.variant}: d={cfg.embed_dim}, {cfg.num_layers} encoder / "
        f"{cfg.num_decoder_layers} decoder layers, {pool}, VQ after layer "
        f"{cfg.quantize_position} ({cfg.codebook_size} codes, block {cfg.attention_block_size})\n"
        f"bitrate: {cfg.token_rate_hz:g} Hz x {math.log2(cfg.codebook_size):g} bits = "
        f"{cfg.bitrate_bps:g} bps"
    )
