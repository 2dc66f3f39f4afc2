"""Config helpers: parse ``:ARGS`` strings, load config files, build the model sections.

Only trainers and CLIs read configs (house_style.md §3). Model hyperparameters reach the model as
the frozen dataclass built by ``model_config`` (GLM) or ``tokenizer_model_config`` (Whisper-VQ).
Validation belongs to each trainer (``trainers/registry.validate`` dispatches on
``config.trainer``); this module imports no trainer.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections as mlc

from glmvoice_jax import checkpoint
from glmvoice_jax.data import token_layout
from glmvoice_jax.models import glm, whisper_vq

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


def init_meta(config: mlc.ConfigDict, what: str) -> dict:
    """The ``init_from`` checkpoint's meta, which ``what`` (a config field) takes values from."""
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
        base = checkpoint.model_config_from_meta(meta or init_meta(config, "model.variant"))
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
        meta = meta or init_meta(config, "tokens.layout")
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


def need(cond: bool, msg: str) -> None:
    """Raises ValueError(msg) unless ``cond``: the validators' one-line checks."""
    if not cond:
        raise ValueError(msg)


# ---------------------------------------------------------------------------------------------
# The speech tokenizer's model section (configs/tokenizer_base.py builds the rest).


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
