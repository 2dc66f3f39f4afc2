"""The train steps that glmvoice-aot compiles: each trainer's jitted step with abstract inputs.

One builder per ``config.trainer`` (``STEPS``); glmvoice-aot imports this module only after it
has set up its environment (JAX reads JAX_PLATFORMS when it is imported). Each returns an
``AotStep``: the step jitted with
the shardings its trainer uses, ShapeDtypeStructs placed on the target mesh, the model FLOPs of
one step, and a way to build concrete inputs for a CPU benchmark.

* ``lm``: ``lm.jit_train_step`` with the shapes of ``lm.step_shapes``, the objects ``train()``
  itself uses.
* ``speech_tokenizer``: ``speech_tokenizer.make_train_step`` jitted as its ``train()`` jits it,
  over the model, optimizer and train-state layout of ``speech_tokenizer.state_layout``, the one
  ``train()`` itself uses. The batch is the worst-case bucket: every row
  ``input.max_audio_secs`` long and ``input.max_text_tokens`` decoder positions.
* ``speech_decoder``: ``speech_decoder.jit_train_step`` over ``speech_decoder.step_layout``, the
  objects its ``train()`` uses; every row ``input.max_tokens`` tokens long (batches are padded to
  it, so this is the only shape the trainer compiles).

Axes (speech tokenizer FLOPs): L mel frames, T encoder frames, T'' pooled frames, U decoder
tokens, D embed, F mlp, V vocab, C codebook entries, M mel bins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from flax import nnx

from glmvoice_jax import audio, checkpoint, config_lib, sharding
from glmvoice_jax.data import speech_input
from glmvoice_jax.models import glm
from glmvoice_jax.models.speech_decoder.flow_loss import cfm_loss
from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens
from glmvoice_jax.trainers import lm, speech_decoder, speech_tokenizer, speech_tokenizer_setup


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
    model_cfg, layout = config_lib.model_config(config), config_lib.token_layout_of(config)
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


def _block_causal_pairs(length: int, block: int | None) -> int:
    """(query, key) pairs a block-causal mask lets through: key block <= query block."""
    if block is None:
        return length * length
    # Query i sees keys up to the end of its block.
    return sum(min((i // block + 1) * block, length) for i in range(length))


def speech_tokenizer_flops(cfg, mel_frames: int, text_tokens: int) -> float:
    """Training FLOPs of one utterance of the Whisper-VQ ASR model (whisper_vq.py).

    3 x the forward matmul FLOPs (forward + backward) of the conv stem, the encoder layers (at
    50 Hz before pooling, pooled after), the decoder layers (self- and cross-attention) and the
    tied output head; attention counts the (query, key) pairs its mask lets through (4 D FLOPs
    each: QK^T and PV). Plus the VQ's code distances, forward only (the codebook is an EMA, so no
    gradient flows through them). Padding frames and tokens are counted: the step computes them.

    Args:
      cfg: the WhisperVQConfig.
      mel_frames: L, mel frames of the (padded) input.
      text_tokens: U, decoder positions.
    """
    d, f, m = cfg.embed_dim, cfg.mlp_dim, cfg.num_mels
    t = math.ceil(mel_frames / 2)  # conv2 stride 2: 50 Hz frames T
    stem = 2 * 3 * m * d * mel_frames + 2 * 3 * d * d * t  # two kernel-3 convs

    def encoder_layers(n: int, frames: int, block: int | None) -> float:
        proj = 2 * frames * (4 * d * d + 2 * d * f)
        return n * (proj + 4 * d * _block_causal_pairs(frames, block))

    pool = cfg.pooling_kernel
    pre = cfg.pooling_position if cfg.uses_pooling else cfg.num_layers
    pooled = math.ceil(t / pool) if cfg.uses_pooling else t  # T''
    pooled_block = cfg.pooled_block_size if cfg.uses_pooling else cfg.attention_block_size
    encoder = encoder_layers(pre, t, cfg.attention_block_size)
    encoder += encoder_layers(cfg.num_layers - pre, pooled, pooled_block)
    vq = 0.0
    if cfg.quantize_position is not None:
        frames_at_vq = pooled if cfg.uses_pooling else t
        vq = 2 * frames_at_vq * cfg.codebook_size * d

    u, fd = text_tokens, cfg.decoder_mlp_dim
    per_decoder_layer = (
        2 * u * (4 * d * d + 2 * d * d + 2 * d * fd)  # self q/k/v/o, cross q/o, MLP
        + 2 * pooled * 2 * d * d  # cross k/v over the encoder output
        + 4 * d * (u * (u + 1) // 2 + u * pooled)  # causal self + full cross attention
    )
    decoder = cfg.num_decoder_layers * per_decoder_layer + 2 * u * cfg.vocab_size * d
    return 3.0 * (stem + encoder + decoder) + vq


def speech_tokenizer_step(config: mlc.ConfigDict, devices) -> AotStep:
    """The speech-tokenizer trainer's step (``trainers/speech_tokenizer.py``) on ``devices``."""
    trainer, setup = speech_tokenizer, speech_tokenizer_setup
    preset = config.axis_rules
    mesh = sharding.make_mesh(config.mesh, devices)
    setup.check_batch_sizes(config, sharding.data_parallel_size(mesh, preset))
    s = trainer.state_layout(config, mesh)
    model_cfg = config_lib.tokenizer_model_config(config)
    gbs, max_text = config.input.global_batch_size, config.input.max_text_tokens
    # The widest bucket: every row max_audio_secs long (a multiple of the bucket unit).
    max_samples = int(config.input.max_audio_secs * audio.SAMPLE_RATE)
    width = speech_input.bucket_width(max_samples, setup.bucket_samples(config, model_cfg))
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
        trainer.make_train_step(s.graphdef, s.tx, model_cfg, config, s.mask),
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
        model_flops=gbs * speech_tokenizer_flops(model_cfg, mel_frames, max_text),
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


def speech_decoder_step(config: mlc.ConfigDict, devices) -> AotStep:
    """The flow-matching trainer's step (``trainers/speech_decoder.py``) on ``devices``."""
    cfg = speech_decoder.validate(config)
    preset = config.axis_rules
    mesh = sharding.make_mesh(config.mesh, devices)
    dp = sharding.data_parallel_size(mesh, preset)
    gbs, n = config.input.global_batch_size, config.input.max_tokens
    if gbs % dp:
        raise ValueError(
            f"input.global_batch_size ({gbs}) must be a multiple of the {dp} data shards; set "
            f"--config.input.global_batch_size to a multiple of {dp}"
        )
    s = speech_decoder.step_layout(config, cfg, mesh)
    t = frames_from_tokens(n, cfg.input_frame_rate)
    batch_dtypes = {
        "tokens": (np.int32, (gbs, n)),
        "token_valid": (np.bool_, (gbs, n)),
        "mel": (np.float32, (gbs, t, cfg.output_size)),
        "frame_mask": (np.float32, (gbs, t)),
    }
    assert set(batch_dtypes) == set(speech_decoder.BATCH_KEYS)
    args = (
        checkpoint.abstract_like(s.abs_params, s.param_sh),
        checkpoint.abstract_like(s.abs_train, s.train_sh),
        {
            k: jax.ShapeDtypeStruct(shape, dt, sharding=s.batch_sh[k])
            for k, (dt, shape) in batch_dtypes.items()
        },
    )

    def make_args():
        rng = np.random.default_rng(0)
        host = {
            "tokens": rng.integers(0, cfg.vocab_size, (gbs, n), dtype=np.int32),
            "token_valid": np.ones((gbs, n), bool),
            "mel": rng.standard_normal((gbs, t, cfg.output_size)).astype(np.float32),
            "frame_mask": np.ones((gbs, t), np.float32),
        }
        with sharding.activate(mesh, preset):
            params = jax.jit(
                lambda: nnx.to_pure_dict(nnx.state(s.make_model())), out_shardings=s.param_sh
            )()
            train = jax.jit(s.init_train, out_shardings=s.train_sh)(params)
        return params, train, {k: jax.device_put(v, s.batch_sh[k]) for k, v in host.items()}

    secs = n / cfg.input_frame_rate
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s.abs_params))
    return AotStep(
        mesh=mesh,
        axis_rules=preset,
        jitted=speech_decoder.jit_train_step(config, s),
        args=args,
        parameters=n_params,
        model_flops=3.0 * gbs * flow_row_flops(s.graphdef, s.abs_params, batch_dtypes),
        flops_basis="3 x XLA's forward count of one row",
        units="audio seconds",
        units_per_step=gbs * secs,
        fields={
            "global_batch": gbs,
            "tokens_per_utterance": n,
            "mel_frames_per_utterance": t,
            "audio_secs_per_utterance": secs,
            "remat_policy": "none",
            "dtype": "float32",
        },
        summary=(
            f"global batch {gbs} utterances x {n} tokens ({t} mel frames, {secs:g} s) = "
            f"{gbs * secs:,.0f} audio seconds, float32 compute, no remat"
        ),
        make_args=make_args,
    )


def flow_row_flops(graphdef, abs_params, batch_dtypes: dict) -> float:
    """Forward FLOPs of the CFM loss on one row, as XLA's cost analysis counts them.

    Lowered (not compiled) for this machine's first device from shapes alone: the step has no
    loops, so the count covers every op (matmuls, convolutions, attention, elementwise).
    """
    row = {k: jax.ShapeDtypeStruct((1, *shape[1:]), dt) for k, (dt, shape) in batch_dtypes.items()}
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abs_params)

    def forward(params, batch):
        model = nnx.merge(graphdef, params)
        args = (batch["tokens"], batch["token_valid"], batch["mel"], batch["frame_mask"])
        return cfm_loss(model, *args, jax.random.key(0))[0]

    cost = jax.jit(forward).lower(params, row).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


STEPS: dict[str, Callable[[mlc.ConfigDict, Any], AotStep]] = {
    "lm": lm_step,
    "speech_tokenizer": speech_tokenizer_step,
    "speech_decoder": speech_decoder_step,
}


def validate(config: mlc.ConfigDict) -> None:
    """The config checks of ``config.trainer`` (the decoder trainer validates its own)."""
    if config.trainer == "speech_decoder":
        speech_decoder.validate(config)
    else:
        config_lib.validate(config)


def build(config: mlc.ConfigDict, devices) -> AotStep:
    """The step of ``config.trainer`` on ``devices``.

    Raises:
      ValueError: for a trainer glmvoice-aot does not know, naming the known ones.
    """
    if config.trainer not in STEPS:
        raise ValueError(
            f"glmvoice-aot compiles the steps of {sorted(STEPS)}; config.trainer is "
            f"{config.trainer!r}"
        )
    return STEPS[config.trainer](config, devices)
