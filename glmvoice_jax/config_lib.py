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
from glmvoice_jax.models import glm

# GLMConfig fields a config may override (None = keep the preset's value).
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(glm.GLMConfig))


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


def model_config(config: mlc.ConfigDict) -> glm.GLMConfig:
    """The one place where the trainer turns ``config.model`` into the model's dataclass.

    ``model.variant = "init_from"`` takes the architecture from the ``init_from`` checkpoint (e.g.
    an imported GLM-4-9B); the other ``model.*`` fields still override it (dtype, remat, ...).
    """
    variant = config.model.variant
    if variant == INIT_FROM:
        base = checkpoint.model_config_from_meta(_init_meta(config, "model.variant"))
        overrides = {k: config.model[k] for k in MODEL_FIELDS if config.model.get(k) is not None}
        return dataclasses.replace(base, **overrides)
    if variant not in glm.VARIANTS:
        raise ValueError(
            f"unknown model.variant {variant!r}; known: {sorted(glm.VARIANTS)} or {INIT_FROM!r}"
            + _near(variant, glm.VARIANTS)
        )
    overrides = {k: config.model[k] for k in MODEL_FIELDS if config.model.get(k) is not None}
    return dataclasses.replace(glm.VARIANTS[variant], **overrides)


def token_layout_of(config: mlc.ConfigDict) -> token_layout.TokenLayout:
    """``tokens.layout``: a preset name, or "init_from" for the layout the checkpoint carries."""
    if config.tokens.layout == INIT_FROM:
        meta = _init_meta(config, "tokens.layout")
        if "token_layout" not in meta:
            raise ValueError(f"checkpoint {config.init_from} carries no token layout")
        return token_layout.TokenLayout.from_json(meta["token_layout"])
    return token_layout.get(config.tokens.layout)


def load_config_file(spec: str) -> mlc.ConfigDict:
    """Loads ``path/to/config.py[:ARGS]`` the way ``--config`` does (used for pre-checks)."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    mod_spec = importlib.util.spec_from_file_location("_glmvoice_config", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(arg or None)


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


def validate(config: mlc.ConfigDict) -> None:
    """Checks what can be checked before tracing; every error names the field, value and fix."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    if config.trainer == "speech_tokenizer":
        from glmvoice_jax.trainers import speech_tokenizer_setup

        speech_tokenizer_setup.validate(config)
        return
    if config.trainer != "lm":
        raise ValueError(
            f"config.trainer {config.trainer!r}: known trainers are 'lm' and 'speech_tokenizer'"
        )
    need(config.total_steps > 0, f"total_steps must be > 0, got {config.total_steps}")
    need(config.log_every_steps > 0, f"log_every_steps must be > 0, got {config.log_every_steps}")
    need(
        config.ckpt.every_steps > 0, f"ckpt.every_steps must be > 0, got {config.ckpt.every_steps}"
    )
    need(config.ckpt.keep >= 1, f"ckpt.keep must be >= 1, got {config.ckpt.keep}")
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
    need(
        config.schedule.decay in ("linear", "cosine", "constant"),
        f"schedule.decay must be 'linear', 'cosine' or 'constant', got {config.schedule.decay!r}",
    )
    need(
        config.metrics.on_nonfinite in ("raise", "skip"),
        f"metrics.on_nonfinite must be 'raise' or 'skip', got {config.metrics.on_nonfinite!r}",
    )
    sharding.rules(config.axis_rules)  # raises with the known presets
    layout = token_layout_of(config)
    model_cfg = model_config(config)  # raises on a bad variant / field value
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
