"""Which trainer runs a config: ``config.trainer`` -> its validate, train, dry run and AOT step.

One explicit table, so grep finds every trainer and glmvoice-train, glmvoice-aot and the bitrate
sweep dispatch alike. Each trainer owns its validation; ``validate`` returns what it built (the
LM's (GLMConfig, TokenLayout), the speech tokenizer's WhisperVQConfig).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections as mlc

from glmvoice_jax import errors
from glmvoice_jax.trainers import aot, lm, speech_tokenizer
from glmvoice_jax.trainers import speech_tokenizer_config as tok_config


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The entry points of one trainer.

    Attributes:
      validate: config -> the model config it built; raises ValueError naming field and fix.
      train: (config, workdir) -> the last logged metrics; resumes from the workdir.
      dry_run: config -> parameter count and per-device bytes; allocates nothing.
      aot_step: (config, devices) -> the jitted step with abstract inputs (glmvoice-aot).
    """

    validate: Callable[[mlc.ConfigDict], Any]
    train: Callable[[mlc.ConfigDict, str], dict[str, Any]]
    dry_run: Callable[[mlc.ConfigDict], dict]
    aot_step: Callable[[mlc.ConfigDict, Sequence[jax.Device]], aot.AotStep]


TRAINERS: dict[str, Trainer] = {
    "lm": Trainer(lm.validate, lm.train, lm.dry_run, aot.lm_step),
    "speech_tokenizer": Trainer(
        tok_config.validate,
        speech_tokenizer.train,
        speech_tokenizer.dry_run,
        aot.speech_tokenizer_step,
    ),
}


def get(config: mlc.ConfigDict) -> Trainer:
    """The trainer ``config.trainer`` names.

    Raises:
      errors.UserError: for an unknown trainer, naming the known ones.
    """
    name = config.get("trainer")
    if name not in TRAINERS:
        raise errors.UserError(
            f"config.trainer is {name!r}; known trainers: {', '.join(sorted(TRAINERS))}"
        )
    return TRAINERS[name]


def validate(config: mlc.ConfigDict) -> Any:
    """Validates ``config`` with its trainer's checks; returns the model config they built."""
    return get(config).validate(config)


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains what ``config`` describes in ``workdir`` (resuming); returns the last metrics."""
    return get(config).train(config, workdir)


def dry_run(config: mlc.ConfigDict) -> dict:
    """Shapes only: parameters and per-device bytes of the config's model on its mesh."""
    return get(config).dry_run(config)


def aot_step(config: mlc.ConfigDict, devices: Sequence[jax.Device]) -> aot.AotStep:
    """The config's train step, jitted with abstract inputs placed on ``devices``."""
    return get(config).aot_step(config, devices)
