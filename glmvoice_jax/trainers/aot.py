"""The train steps that glmvoice-aot compiles: each trainer's jitted step with abstract inputs.

One builder per trainer (``registry.TRAINERS[name].aot_step``); glmvoice-aot imports this module
only after it has set up its environment (JAX reads JAX_PLATFORMS when it is imported). Each
validates the config (building the model config once) and returns an ``AotStep``: the step jitted
with the shardings its trainer uses, ShapeDtypeStructs placed on the target mesh, the model FLOPs
of one step, and a way to build concrete inputs for a CPU benchmark.

* ``lm``: ``lm.jit_train_step`` with the shapes of ``lm.step_shapes``, the objects ``train()``
  itself uses.
* ``speech_tokenizer``: ``speech_tokenizer.make_train_step`` jitted as its ``train()`` jits it,
  over the model, optimizer and train-state layout of ``speech_tokenizer_state.state_layout``,
  the one ``train()`` itself uses. The batch is the worst-case bucket: every row
  ``input.max_audio_secs`` long and ``input.max_text_tokens`` decoder positions; its FLOPs are
  ``WhisperVQConfig.train_flops``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from flax import nnx

from glmvoice_jax import audio, checkpoint, sharding
from glmvoice_jax.data import speech_input
from glmvoice_jax.models import glm
from glmvoice_jax.trainers import lm, speech_tokenizer
from glmvoice_jax.trainers import speech_tokenizer_config as tok_config
from glmvoice_jax.trainers import speech_tokenizer_data as tok_data
from glmvoice_jax.trainers import speech_tokenizer_state as tok_state


@dataclasses.dataclass(frozen=True)
class AotStep:
    """A trainer's train step, jitted, with abstract arguments on the target mesh.

    Attributes:
      mesh: the device mesh.
      axis_rules: the sharding preset to activate while lowering.
      jitted: the jitted step (params, train, batch) -> (params, train, metrics).
      args: ShapeDtypeStructs with NamedShardings for ``jitted.lower``.
      parameters: model parameter count.
      model_flops: training FLOPs of one step (forward + backward, no remat recompute).
      flops_basis: what ``model_flops`` counts, in a few words.
      units: what throughput is counted in ("tokens", "audio seconds").
      units_per_step: how many of them one step consumes.
      fields: trainer-specific entries of the report (batch, remat, ...).
      summary: one line describing the step for the printed report.
      make_args: builds concrete (params, train, batch) for a benchmark on local devices.
    """

    mesh: Any
    axis_rules: str
    jitted: Any
    args: tuple
    parameters: int
    model_flops: float
    flops_basis: str
    units: str
    units_per_step: float
    fields: dict
    summary: str
    make_args: Callable[[], tuple]


def lm_step(config: mlc.ConfigDict, devices) -> AotStep:
    """The LM trainer's step (``trainers/lm.py``) on ``devices``."""
    model_cfg, layout = lm.validate(config)
    glm.check_remat_policy(model_cfg.remat_policy, devices)
    mesh = sharding.make_mesh(config.mesh, devices)
    shapes = lm.step_shapes(config, mesh, model_cfg, layout)
    gbs, seq_len = config.input.global_batch_size, config.input.seq_len
    tokens = gbs * seq_len
    args = (
        checkpoint.abstract_like(shapes.abs_params, shapes.param_sh),
        checkpoint.abstract_like(shapes.abs_train, shapes.train_sh),
        lm.abstract_batch(config, shapes),
    )

    def make_args():
        rng = np.random.default_rng(0)
        host = {
            "tokens": rng.integers(0, model_cfg.vocab_size, (gbs, seq_len), dtype=np.int32),
            "segment_ids": np.ones((gbs, seq_len), np.int32),
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (gbs, seq_len)),
            "loss_mask": np.ones((gbs, seq_len), np.int32),
        }
        with sharding.activate(mesh, config.axis_rules):
            params = jax.jit(
                lambda: nnx.to_pure_dict(nnx.state(shapes.make_model())),
                out_shardings=shapes.param_sh,
            )()
            train = jax.jit(shapes.init_train, out_shardings=shapes.train_sh)(params)
        return params, train, {k: jax.device_put(v, shapes.batch_sh) for k, v in host.items()}

    accum = config.optim.grad_accum_steps
    return AotStep(
        mesh=mesh,
        axis_rules=config.axis_rules,
        jitted=lm.jit_train_step(config, shapes),
        args=args,
        parameters=model_cfg.param_count(),
        model_flops=model_cfg.flops_per_token(seq_len) * tokens,
        flops_basis="6N + attention",
        units="tokens",
        units_per_step=tokens,
        fields={
            "global_batch": gbs,
            "seq_len": seq_len,
            "tokens_per_step": tokens,
            "grad_accum_steps": accum,
            "remat_policy": model_cfg.remat_policy,
        },
        summary=(
            f"global batch {gbs} x seq {seq_len} = {tokens:,} tokens, grad_accum {accum}, "
            f"remat {model_cfg.remat_policy}"
        ),
        make_args=make_args,
    )


def speech_tokenizer_step(config: mlc.ConfigDict, devices) -> AotStep:
    """The speech-tokenizer trainer's step (``trainers/speech_tokenizer.py``) on ``devices``."""
    model_cfg = tok_config.validate(config)
    preset = config.axis_rules
    mesh = sharding.make_mesh(config.mesh, devices)
    tok_config.check_batch_sizes(config, sharding.data_parallel_size(mesh, preset))
    s = tok_state.state_layout(config, mesh, model_cfg)
    gbs, max_text = config.input.global_batch_size, config.input.max_text_tokens
    # The widest bucket: every row max_audio_secs long (a multiple of the bucket unit).
    max_samples = int(config.input.max_audio_secs * audio.SAMPLE_RATE)
    width = speech_input.bucket_width(max_samples, tok_data.bucket_samples(config, model_cfg))
    batch_dtypes = {
        "wav": (np.float32, (gbs, width)),
        "wav_len": (np.int32, (gbs,)),
        "dec_in": (np.int32, (gbs, max_text)),
        "dec_target": (np.int32, (gbs, max_text)),
        "dec_weight": (np.float32, (gbs, max_text)),
        "dec_valid": (np.bool_, (gbs, max_text)),
    }
    assert set(batch_dtypes) == set(speech_input.BATCH_KEYS)
    batch_sh = {
        k: sharding.batch_sharding(mesh, preset, len(shape))
        for k, (_, shape) in batch_dtypes.items()
    }
    jitted = jax.jit(
        speech_tokenizer.make_train_step(s.graphdef, s.tx, model_cfg, config, s.mask),
        in_shardings=(s.param_sh, s.train_sh, batch_sh),
        out_shardings=(s.param_sh, s.train_sh, s.replicated),
        donate_argnums=(0, 1),
    )
    args = (
        checkpoint.abstract_like(s.abs_params, s.param_sh),
        checkpoint.abstract_like(s.abs_train, s.train_sh),
        {
            k: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sh[k])
            for k, (dt, shape) in batch_dtypes.items()
        },
    )

    def make_args():
        rng = np.random.default_rng(0)
        host = {
            "wav": (0.1 * rng.standard_normal((gbs, width))).astype(np.float32),
            "wav_len": np.full((gbs,), width, np.int32),
            "dec_in": rng.integers(0, model_cfg.vocab_size, (gbs, max_text), dtype=np.int32),
            "dec_target": rng.integers(0, model_cfg.vocab_size, (gbs, max_text), dtype=np.int32),
            "dec_weight": np.ones((gbs, max_text), np.float32),
            "dec_valid": np.ones((gbs, max_text), bool),
        }
        with sharding.activate(mesh, preset):
            params = jax.jit(
                lambda: nnx.to_pure_dict(nnx.state(s.make_model())),
                out_shardings=s.param_sh,
            )()
            train = jax.jit(s.init_train, out_shardings=s.train_sh)(params)
        return params, train, {k: jax.device_put(v, batch_sh[k]) for k, v in host.items()}

    mel_frames = width // audio.HOP_LENGTH
    secs = width / audio.SAMPLE_RATE
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s.abs_params))
    remat = "per layer" if model_cfg.remat else "none"
    return AotStep(
        mesh=mesh,
        axis_rules=preset,
        jitted=jitted,
        args=args,
        parameters=n_params,
        model_flops=gbs * model_cfg.train_flops(mel_frames, max_text),
        flops_basis="3 x forward matmuls and attention + VQ",
        units="audio seconds",
        units_per_step=gbs * secs,
        fields={
            "global_batch": gbs,
            "audio_secs_per_utterance": secs,
            "text_tokens": max_text,
            "remat_policy": remat,
            "dtype": model_cfg.dtype,
        },
        summary=(
            f"global batch {gbs} utterances x {secs:g} s (+ {max_text} decoder tokens) = "
            f"{gbs * secs:,.0f} audio seconds, {model_cfg.dtype} compute, remat {remat}"
        ),
        make_args=make_args,
    )
