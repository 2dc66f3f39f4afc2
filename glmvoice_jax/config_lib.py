"""Config helpers: parse ``:ARGS`` strings, build sections, validate before anything is traced.

Only trainers and CLIs read configs (house_style.md §3). Model hyperparameters reach the model as
the frozen dataclass built by ``model_config`` in exactly one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections as mlc

from glmvoice_jax import checkpoint, sharding
from glmvoice_jax.data import token_layout
from glmvoice_jax.data.input import hf_sources
from glmvoice_jax.models import fused_attention, glm, whisper_vq

# GLMConfig fields a config may override (None = keep the preset's value).
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(glm.GLMConfig))
# The same for the speech tokenizer's WhisperVQConfig.
TOKENIZER_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(whisper_vq.WhisperVQConfig))


def parse_arg(arg: str | None, **defaults: Any) -> mlc.ConfigDict:
    """'a=1,b=x,flag' -> ConfigDict over ``defaults`` (types follow the defaults).

    A bare word sets a boolean default to True, or is the value of the first default (so
    ``config.py:tiny`` selects a variant).
    """
    out = mlc.ConfigDict(dict(defaults))
    if not arg:
        return out
    first = next(iter(defaults), None)
    for part in arg.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, value = part.split("=", 1)
        elif isinstance(defaults.get(part), bool):
            key, value = part, "true"
        elif first is not None:
            key, value = first, part
        else:
            raise ValueError(f"config argument {part!r} is not key=value")
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r}; known: {sorted(defaults)}" + _near(key, defaults)
            )
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value) if defaults[key] is not None else value
    return out


def model_section(variant: str, **values: Any) -> mlc.ConfigDict:
    """``config.model``: the preset name plus every GLMConfig field as an optional override."""
    unknown = set(values) - set(MODEL_FIELDS)
    if unknown:
        raise ValueError(f"unknown model fields {sorted(unknown)}; known: {MODEL_FIELDS}")
    section = {"variant": variant}
    for f in dataclasses.fields(glm.GLMConfig):
        kind = {int: int, float: float, bool: bool, str: str}.get(
            type(getattr(glm.VARIANTS["tiny"], f.name))
        )
        section[f.name] = values.get(f.name, mlc.config_dict.placeholder(kind))
    return mlc.ConfigDict(section)


INIT_FROM = "init_from"  # model.variant / tokens.layout value: take it from the init checkpoint


def _init_meta(config: mlc.ConfigDict, what: str) -> dict:
    if not config.init_from:
        raise ValueError(
            f"{what} = {INIT_FROM!r} needs --config.init_from=CKPT (the checkpoint to read it from)"
        )
    return checkpoint.read_meta(config.init_from)


def model_config(config: mlc.ConfigDict, meta: dict | None = None) -> glm.GLMConfig:
    """The one place where the trainer turns ``config.model`` into the model's dataclass.

    ``model.variant = "init_from"`` takes the architecture from the ``init_from`` checkpoint (e.g.
    an imported GLM-4-9B); the other ``model.*`` fields still override it (dtype, remat, ...).
    """
    variant = config.model.variant
    if variant == INIT_FROM:
        base = checkpoint.model_config_from_meta(
            meta or _init_meta(config, "model.variant"),
            expect=glm.GLMConfig,
            what=f"init_from checkpoint {config.init_from}",
        )
        overrides = {k: config.model[k] for k in MODEL_FIELDS if config.model.get(k) is not None}
        return dataclasses.replace(base, **overrides)
    if variant not in glm.VARIANTS:
        raise ValueError(
            f"unknown model.variant {variant!r}; known: {sorted(glm.VARIANTS)} or {INIT_FROM!r}"
            + _near(variant, glm.VARIANTS)
        )
    overrides = {k: config.model[k] for k in MODEL_FIELDS if config.model.get(k) is not None}
    return dataclasses.replace(glm.VARIANTS[variant], **overrides)


def token_layout_of(config: mlc.ConfigDict, meta: dict | None = None) -> token_layout.TokenLayout:
    """``tokens.layout``: a preset name, or "init_from" for the layout the checkpoint carries.

    ``meta``: the init checkpoint's meta when the caller has read it already.
    """
    if config.tokens.layout == INIT_FROM:
        meta = meta or _init_meta(config, "tokens.layout")
        if "token_layout" not in meta:
            raise ValueError(f"checkpoint {config.init_from} carries no token layout")
        return token_layout.TokenLayout.from_json(meta["token_layout"])
    return token_layout.get(config.tokens.layout)


def load_config_module(path: str):
    """The module of a config file (configs are files loaded by path, not a package)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    name = "_glmvoice_config_" + os.path.splitext(os.path.basename(path))[0]
    mod_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def load_config_file(spec: str) -> mlc.ConfigDict:
    """Loads ``path/to/config.py[:ARGS]`` the way ``--config`` does (used for pre-checks)."""
    path, _, arg = spec.partition(":")
    return load_config_module(path).get_config(arg or None)


def check_override_keys(config: mlc.ConfigDict, keys: Iterable[str]) -> None:
    """Raises for ``--config.a.b`` overrides that name no config field, listing near names."""
    known = _flat_keys(config)
    for key in keys:
        if key not in known:
            raise ValueError(f"unknown config key {key!r}" + _near(key, known))


def _flat_keys(d: Mapping, prefix: str = "") -> set[str]:
    out = set()
    for k in d:
        full = f"{prefix}{k}"
        out.add(full)
        v = d[k]
        if isinstance(v, (mlc.ConfigDict, dict)):
            out |= _flat_keys(v, full + ".")
    return out


def _near(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=4, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _validate_loop(config: mlc.ConfigDict) -> None:
    """What both trainers' configs share: step counts, cadences, schedule, NaN policy, rules."""
    for key in ("total_steps", "log_every_steps"):
        _need(config[key] > 0, f"{key} must be > 0, got {config[key]}")
    _need(
        config.ckpt.every_steps > 0, f"ckpt.every_steps must be > 0, got {config.ckpt.every_steps}"
    )
    _need(config.ckpt.keep >= 1, f"ckpt.keep must be >= 1, got {config.ckpt.keep}")
    _need(
        config.schedule.decay in ("linear", "cosine", "constant"),
        f"schedule.decay must be 'linear', 'cosine' or 'constant', got {config.schedule.decay!r}",
    )
    _need(
        config.metrics.on_nonfinite in ("raise", "skip"),
        f"metrics.on_nonfinite must be 'raise' or 'skip', got {config.metrics.on_nonfinite!r}",
    )
    sharding.rules(config.axis_rules)  # raises with the known presets


def validate(config: mlc.ConfigDict) -> tuple[Any, Any] | None:
    """Checks what can be checked before tracing; every error names the field, value and fix.

    Returns:
      For the LM trainer, the (GLMConfig, TokenLayout) it built, so a run builds them once
      (under ``init_from`` they read the checkpoint's meta); None for the speech tokenizer.
    """

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    if config.trainer == "speech_tokenizer":
        validate_speech_tokenizer(config)
        return
    if config.trainer != "lm":
        raise ValueError(
            f"config.trainer {config.trainer!r}: known trainers are 'lm' and 'speech_tokenizer'"
        )
    _validate_loop(config)
    inp = config.input
    need(
        inp.global_batch_size > 0,
        f"input.global_batch_size must be > 0, got {inp.global_batch_size}",
    )
    need(inp.seq_len > 1, f"input.seq_len must be > 1, got {inp.seq_len}")
    accum = config.optim.grad_accum_steps
    need(accum >= 1, f"optim.grad_accum_steps must be >= 1, got {accum}")
    need(
        inp.global_batch_size % accum == 0,
        f"input.global_batch_size ({inp.global_batch_size}) must be divisible by "
        f"optim.grad_accum_steps ({accum})",
    )
    chunk = min(config.loss.chunk_size, inp.seq_len)
    need(
        inp.seq_len % chunk == 0,
        f"loss.chunk_size ({config.loss.chunk_size}) must divide input.seq_len ({inp.seq_len})",
    )
    need(len(inp.sources) > 0, "input.sources is empty: configure at least one source")
    groups = inp.get("shard_groups", 0)
    need(
        groups >= 0 and inp.global_batch_size % max(1, groups) == 0,
        f"input.shard_groups ({groups}) must be >= 0 and divide input.global_batch_size "
        f"({inp.global_batch_size})",
    )
    weights = {name: float(src.weight) for name, src in inp.sources.items()}
    for name, w in weights.items():
        need(w >= 0, f"input.sources.{name}.weight must be >= 0, got {w}")
    need(
        sum(weights.values()) > 0,
        f"input.sources weights sum to 0 ({weights}); give at least one source a positive weight",
    )
    uses_meta = INIT_FROM in (config.model.variant, config.tokens.layout)
    meta = _init_meta(config, "model.variant / tokens.layout") if uses_meta else None
    layout = token_layout_of(config, meta)
    for name, src in inp.sources.items():  # parquet / arrow sources tokenize with their layout
        fmt = src.get("format", "array_record")
        if fmt != "array_record":
            extra = {k: v for k, v in src.items() if k not in ("paths", "weight", "format")}
            opts = hf_sources.check_options(name, fmt, extra)
            need(
                opts["layout"] == layout.name,
                f"input.sources.{name}.layout is {opts['layout']!r} but the run's token layout is "
                f"{layout.name!r}; set the source's layout to {layout.name!r} (and a tokenizer "
                "of that layout)",
            )
    model_cfg = model_config(config, meta)  # raises on a bad variant / field value
    need(
        layout.vocab_size <= model_cfg.vocab_size,
        f"token layout {layout.name!r} has {layout.vocab_size} ids but the model vocab is "
        f"{model_cfg.vocab_size}; use a matching tokens.layout or model.vocab_size",
    )
    if model_cfg.attention_impl == "chunked":
        c = min(model_cfg.attention_chunk, inp.seq_len)
        need(
            inp.seq_len % c == 0,
            f"model.attention_chunk ({model_cfg.attention_chunk}) must divide input.seq_len "
            f"({inp.seq_len})",
        )
    if model_cfg.attention_impl == "splash":  # the kernel's tiles are multiples of 128 lanes
        lanes = fused_attention.SPLASH_LANES
        need(
            inp.seq_len % lanes == 0,
            f"model.attention_impl='splash' needs input.seq_len to be a multiple of {lanes}, got "
            f"{inp.seq_len}; change input.seq_len or use model.attention_impl='chunked'",
        )
    return model_cfg, layout


# ---------------------------------------------------------------------------------------------
# The speech tokenizer's model section and validation (configs/tokenizer_base.py builds the rest).


def tokenizer_model_section(variant: str, **values: Any) -> mlc.ConfigDict:
    """``config.model``: the preset name plus every WhisperVQConfig field as an optional override.

    A field left None keeps the preset's value (so a None-valued field cannot be set from here).
    """
    unknown = set(values) - set(TOKENIZER_MODEL_FIELDS)
    if unknown:
        raise ValueError(
            f"unknown WhisperVQConfig fields {sorted(unknown)}; known: {TOKENIZER_MODEL_FIELDS}"
        )
    section = {"variant": variant}
    for name in TOKENIZER_MODEL_FIELDS:
        kind = type(getattr(whisper_vq.VARIANTS["tiny"], name))
        kind = float if kind is type(None) else kind  # the only None-default field is a float
        section[name] = values.get(name, mlc.config_dict.placeholder(kind))
    return mlc.ConfigDict(section)


def tokenizer_model_config(config: mlc.ConfigDict) -> whisper_vq.WhisperVQConfig:
    """The one place where ``config.model`` becomes the model's dataclass."""
    variant = config.model.variant
    if variant not in whisper_vq.VARIANTS:
        raise ValueError(f"unknown model.variant {variant!r}; known: {sorted(whisper_vq.VARIANTS)}")
    overrides = {
        k: config.model[k] for k in TOKENIZER_MODEL_FIELDS if config.model.get(k) is not None
    }
    return dataclasses.replace(whisper_vq.VARIANTS[variant], **overrides)


def validate_speech_tokenizer(config: mlc.ConfigDict) -> None:
    """Checks what can be checked before tracing; every error names the field, value and fix."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    need(
        config.trainer == "speech_tokenizer",
        f"config.trainer is {config.trainer!r}; this validator is for 'speech_tokenizer'",
    )
    _validate_loop(config)
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
    model_cfg = tokenizer_model_config(config)  # raises on a bad variant / field value
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
