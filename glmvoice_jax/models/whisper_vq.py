"""Whisper-VQ: the GLM-4-Voice speech tokenizer as a Whisper ASR model, and stock Whisper.

Ref: GLM-4-Voice ``speech_tokenizer/modeling_whisper.py`` @ eb00ce9 (``WhisperVQEncoder``,
``WhisperVQForConditionalGeneration``) and transformers ``models/whisper/modeling_whisper.py``;
glm4voice.md §2.1-2.4, §2.11-2.12. Parameter names follow the HF checkpoints (see
``convert/whisper.py`` for the one rename table).

Encoder forward (channel-last inside):
  mel [B, L, M] -> conv1 (k 3, stride 1) -> GELU -> conv2 (k 3, stride 2) -> GELU: [B, L', D] with
  L' = ceil(L / 2); causal convs pad 2 frames on the left only, stock ones 1 on each side. Mask
  mel_mask[:, ::2]. + embed_positions[:L'] (frozen sinusoid table). Layers with the block-causal
  mask (+ key padding). After layer ``pooling_position``: zero right-pad to a multiple of the
  kernel, average (or max) pool; mask[:, ::kernel]; block size becomes block // kernel. After layer
  ``quantize_position``: VQ (straight-through in training), then + embed_positions2. Remaining
  layers, final LayerNorm. The decoder (token + learned position embeddings, causal self-attention,
  cross-attention, output tied to the token embedding) gives the ASR logits.

Stock Whisper is the same module with ``use_causal_conv=False``, ``attention_block_size=None``,
``pooling_kernel=1`` and ``quantize_position=None`` (the "whisper_large_v3" preset).

Axes: B batch, L mel frames, M mel bins, T encoder frames (T'' after pooling), U decoder tokens,
D embed, F mlp, N heads, H head dim, V vocab, C codebook entries, W conv kernel width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax import sharding
from glmvoice_jax.models import whisper_layers as wl
from glmvoice_jax.models.vq import VectorQuantizer

MEL_RATE_HZ = 100  # 16 kHz / hop 160
STEM_STRIDE = 2  # conv1 stride 1 x conv2 stride 2
HOP_LENGTH = 160


@dataclasses.dataclass(frozen=True)
class WhisperVQConfig:
    """Hyperparameters of a Whisper(-VQ) ASR model.

    Attributes:
      num_mels: mel bins M of the input (128 for large-v3).
      embed_dim: width D (HF ``d_model``), also the codebook dimension.
      num_heads: encoder attention heads N.
      mlp_dim: encoder MLP width F.
      num_layers: encoder layers, including those after the quantizer.
      max_source_positions: rows of the encoder position table (1500 = 30 s at 50 Hz).
      use_causal_conv: causal stem convs (left pad 2) instead of symmetric padding.
      attention_block_size: block-causal attention block in 50 Hz frames (§2.4); None is
        bidirectional, 1 is plain causal. After pooling the block is ``block // pooling_kernel``
        (1 stays 1).
      pooling_kernel: pooling kernel = stride; 1 means no pooling (50 Hz tokens).
      pooling_position: pooling happens after this many encoder layers (ignored for kernel 1).
      pooling_type: "avg" (GLM-4-Voice) or "max".
      quantize_position: the VQ sits after this many encoder layers; None means no VQ.
      codebook_size: codebook entries C (token vocabulary of the speech LM).
      ema_decay: EMA decay of the codebook; None trains the codebook by gradient (ref fallback).
      commit_coef: commitment coefficient.
      vq_loss_scale: factor on the VQ loss (project default 40 -> effective commitment 10).
      restart_interval: EMA steps between dead-code restarts; None disables them.
      vocab_size: Whisper text vocabulary V (51866 for large-v3).
      num_decoder_layers: decoder layers; 0 builds an encoder-only model (the released tokenizer
        has no decoder weights).
      num_decoder_heads: decoder attention heads.
      decoder_mlp_dim: decoder MLP width.
      max_target_positions: rows of the decoder's learned position table.
      norm_eps: LayerNorm epsilon.
      init_std: stddev of the normal initializer (HF ``init_std``).
      conv_init_std: stddev for the conv stem's kernels; None uses init_std. Larger values make
        the audio, not the sinusoid position table, dominate the frames of a from-scratch model.
      param_dtype: dtype parameters are stored in.
      dtype: compute dtype of matmuls (softmax, LayerNorm statistics and VQ stay float32).
      remat: rematerialise each transformer layer in the backward pass.
    """

    num_mels: int = 128
    embed_dim: int = 1280
    num_heads: int = 20
    mlp_dim: int = 5120
    num_layers: int = 32
    max_source_positions: int = 1500
    use_causal_conv: bool = True
    attention_block_size: int | None = 200
    pooling_kernel: int = 4
    pooling_position: int | None = 16
    pooling_type: str = "avg"
    quantize_position: int | None = 16
    codebook_size: int = 16384
    ema_decay: float | None = 0.99
    commit_coef: float = 0.25
    vq_loss_scale: float = 40.0
    restart_interval: int | None = 100
    vocab_size: int = 51866
    num_decoder_layers: int = 32
    num_decoder_heads: int = 20
    decoder_mlp_dim: int = 5120
    max_target_positions: int = 448
    norm_eps: float = 1e-5
    init_std: float = 0.02
    conv_init_std: float | None = None
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: bool = False

    def __post_init__(self):
        errors = []
        for name in ("num_mels", "embed_dim", "num_heads", "mlp_dim", "num_layers",
                     "max_source_positions", "pooling_kernel", "codebook_size", "vocab_size",
                     "num_decoder_heads", "decoder_mlp_dim", "max_target_positions"):  # fmt: skip
            if getattr(self, name) < 1:
                errors.append(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.num_decoder_layers < 0:
            errors.append(f"num_decoder_layers ({self.num_decoder_layers}) must be >= 0")
        if self.embed_dim % self.num_heads or self.embed_dim % self.num_decoder_heads:
            errors.append(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads}) "
                f"and num_decoder_heads ({self.num_decoder_heads})"
            )
        if self.pooling_type not in ("avg", "max"):
            errors.append(f"pooling_type {self.pooling_type!r} must be 'avg' or 'max'")
        if self.uses_pooling and not (
            self.pooling_position is not None and 1 <= self.pooling_position <= self.num_layers
        ):
            errors.append(
                f"pooling_position ({self.pooling_position}) must be in [1, num_layers="
                f"{self.num_layers}] when pooling_kernel ({self.pooling_kernel}) > 1"
            )
        qp = self.quantize_position
        if qp is not None:
            if not 1 <= qp <= self.num_layers:
                errors.append(
                    f"quantize_position ({qp}) must be in [1, num_layers={self.num_layers}], or "
                    "None for no quantizer"
                )
            if (
                self.uses_pooling
                and self.pooling_position is not None
                and qp < self.pooling_position
            ):
                errors.append(
                    f"quantize_position ({qp}) must be >= pooling_position "
                    f"({self.pooling_position}): the reference quantizes pooled frames"
                )
        if self.attention_block_size is not None:
            if self.attention_block_size < 1:
                errors.append(f"attention_block_size ({self.attention_block_size}) must be >= 1")
            elif (
                self.uses_pooling
                and self.pooling_position is not None
                and self.pooling_position < self.num_layers
                and 1 < self.attention_block_size < self.pooling_kernel
            ):
                errors.append(
                    f"attention_block_size ({self.attention_block_size}) must be 1 (causal) or >= "
                    f"pooling_kernel ({self.pooling_kernel}): layers after pooling use block // "
                    "kernel"
                )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            errors.append(f"ema_decay ({self.ema_decay}) must be in (0, 1) or None")
        if self.restart_interval is not None and self.restart_interval < 1:
            errors.append(f"restart_interval ({self.restart_interval}) must be >= 1 or None")
        for name in ("param_dtype", "dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                errors.append(f"{name} {getattr(self, name)!r} is not a dtype name")
        if errors:
            raise ValueError("invalid WhisperVQConfig: " + "; ".join(errors))

    @property
    def uses_pooling(self) -> bool:
        return self.pooling_kernel > 1

    @property
    def token_rate_hz(self) -> float:
        """Frames per second at the quantizer (and after pooling): 50 / pooling_kernel."""
        return MEL_RATE_HZ / STEM_STRIDE / self.pooling_kernel

    @property
    def samples_per_token(self) -> int:
        """16 kHz samples per output frame; inputs are padded to a multiple of it (1280)."""
        return HOP_LENGTH * STEM_STRIDE * self.pooling_kernel

    @property
    def bitrate_bps(self) -> float | None:
        """log2(codebook_size) * token_rate_hz; None without a quantizer."""
        if self.quantize_position is None:
            return None
        return math.log2(self.codebook_size) * self.token_rate_hz

    @property
    def pooled_block_size(self) -> int | None:
        if self.attention_block_size is None:
            return None
        if self.attention_block_size == 1:
            return 1  # plain causal stays causal
        return self.attention_block_size // self.pooling_kernel

    def train_flops(self, batch: int, mel_frames: int, dec_len: int) -> float:
        """Training FLOPs of one step (forward + backward = 3 x forward) on padded shapes.

        Counted as the LM's ``flops_per_token`` (2 flops per multiply-add, matmuls only, the
        attention matrices at their full computed size): the conv stem over ``mel_frames``
        (100 Hz), the encoder layers at 50 Hz before pooling and at the pooled rate after it,
        the codebook distances, and the ASR decoder's ``dec_len`` tokens (self- and cross-
        attention, MLP, output projection). Biases, norms and the softmax are left out.
        """
        d, f, m = self.embed_dim, self.mlp_dim, self.num_mels
        t50 = mel_frames // STEM_STRIDE
        stem = 2 * 3 * m * d * mel_frames + 2 * 3 * d * d * t50
        pooled_at = self.pooling_position if self.uses_pooling else self.num_layers
        t_out = t50 // self.pooling_kernel

        def layer(t: int) -> float:
            return t * (8 * d * d + 4 * d * f + 4 * t * d)

        enc = pooled_at * layer(t50) + (self.num_layers - pooled_at) * layer(t_out)
        vq = 0.0
        if self.quantize_position is not None:
            t_vq = t50 if self.quantize_position < pooled_at else t_out
            vq = 2.0 * t_vq * d * self.codebook_size
        s, fd = dec_len, self.decoder_mlp_dim
        dec_layer = s * (8 * d * d + 4 * s * d) + s * 4 * d * d + t_out * 4 * d * d
        dec_layer += s * (4 * t_out * d + 4 * d * fd)
        dec = self.num_decoder_layers * dec_layer
        if self.num_decoder_layers:
            dec += 2.0 * s * d * self.vocab_size
        return 3.0 * batch * (stem + enc + vq + dec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WhisperVQConfig:
        """Builds a config from ``to_dict`` output; rejects unknown fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown WhisperVQConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


_LARGE_V3 = dict(
    num_mels=128, embed_dim=1280, num_heads=20, mlp_dim=5120, num_layers=32,
    max_source_positions=1500, vocab_size=51866, num_decoder_layers=32, num_decoder_heads=20,
    decoder_mlp_dim=5120, max_target_positions=448,
)  # fmt: skip
_GLM_TOKENIZER = dict(
    _LARGE_V3, use_causal_conv=True, attention_block_size=200, pooling_position=16,
    pooling_type="avg", quantize_position=16, ema_decay=0.99,
)  # fmt: skip

VARIANTS: dict[str, WhisperVQConfig] = {
    # Unit tests and the CPU demo: 4 layers, pooling and VQ after layer 2, 1 s blocks.
    "tiny": WhisperVQConfig(
        embed_dim=32,
        num_heads=2,
        mlp_dim=64,
        num_layers=4,
        attention_block_size=50,
        pooling_kernel=4,
        pooling_position=2,
        quantize_position=2,
        codebook_size=64,
        vocab_size=128,
        num_decoder_layers=2,
        num_decoder_heads=2,
        decoder_mlp_dim=64,
        max_target_positions=64,
    ),
    # The released THUDM/glm-4-voice-tokenizer: 12.5 Hz, 16384 codes, 175 bps (§2.11).
    "glm4_voice_tokenizer": WhisperVQConfig(
        **_GLM_TOKENIZER, pooling_kernel=4, codebook_size=16384
    ),
    # Bitrate ablation of [P] Table 1 (glm4voice.md §3): 600, 300 and 100 bps.
    "glm4_voice_tokenizer_50hz": WhisperVQConfig(
        **_GLM_TOKENIZER, pooling_kernel=1, codebook_size=4096
    ),
    "glm4_voice_tokenizer_25hz": WhisperVQConfig(
        **_GLM_TOKENIZER, pooling_kernel=2, codebook_size=4096
    ),
    "glm4_voice_tokenizer_6p25hz": WhisperVQConfig(
        **_GLM_TOKENIZER, pooling_kernel=8, codebook_size=65536
    ),
    # Stock openai/whisper-large-v3: no pooling, no VQ, bidirectional, symmetric convs.
    "whisper_large_v3": WhisperVQConfig(
        **_LARGE_V3,
        use_causal_conv=False,
        attention_block_size=None,
        pooling_kernel=1,
        pooling_position=None,
        quantize_position=None,
    ),
}


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table [length, channels]: [sin | cos] over geometric timescales."""
    if channels % 2:
        raise ValueError(f"sinusoid channels ({channels}) must be even")
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-increment * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class Frozen(nnx.Variable):
    """A fixed table that is loaded, never trained (Whisper's encoder position table)."""


class EncoderOutput(NamedTuple):
    """What the encoder returns.

    Attributes:
      hidden: [B, T, D] last hidden states (after the final LayerNorm, unless stopped early).
      mask: [B, T] valid frames at the output rate.
      ids: [B, T''] token ids at the quantizer, or None without VQ.
      token_mask: [B, T''] valid tokens, or None without VQ.
      aux: VQ metrics and loss (``vq_loss`` is 0 without VQ or at inference).
    """

    hidden: jax.Array
    mask: jax.Array
    ids: jax.Array | None
    token_mask: jax.Array | None
    aux: dict[str, jax.Array]


class Conv1d(nnx.Module):
    """Conv1d channel-last; kernel [W, in, out]. Causal: pad W-1 left; else (W-1)//2 each side."""

    def __init__(self, cin, cout, *, width=3, stride=1, causal, init_std, dtype, param_dtype, rngs):
        axes = (None, "conv_in", "conv_out")
        init = nnx.initializers.normal(init_std)
        self.kernel = wl.param(rngs, init, (width, cin, cout), axes, param_dtype)
        self.bias = wl.param(rngs, nnx.initializers.zeros, (cout,), ("conv_out",), param_dtype)
        self.stride = stride
        self.padding = ((width - 1, 0),) if causal else (((width - 1) // 2, (width - 1) // 2),)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps [B, L, in] to [B, ceil(L / stride), out] (width 3, either padding)."""
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            self.kernel[...].astype(self.dtype),
            window_strides=(self.stride,),
            padding=self.padding,
            dimension_numbers=("NWC", "WIO", "NWC"),
        )
        return y + self.bias[...].astype(self.dtype)


def pool_frames(x: jax.Array, kernel: int, pooling_type: str) -> jax.Array:
    """[B, T, D] -> [B, ceil(T / kernel), D]: zero right-pad, then avg/max over windows."""
    b, t, d = x.shape
    pad = -t % kernel
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))  # the zeros count in the last window
    x = x.reshape(b, (t + pad) // kernel, kernel, d)  # (B, T'', kernel, D)
    return x.mean(axis=2) if pooling_type == "avg" else x.max(axis=2)


def _call_layer(layer: nnx.Module, remat: bool, *args) -> jax.Array:
    if remat:
        return nnx.remat(lambda mod, *a: mod(*a))(layer, *args)
    return layer(*args)


class WhisperVQEncoder(nnx.Module):
    """Conv stem, position table, block-causal layers, pooling + VQ in the middle, final norm."""

    def __init__(self, config: WhisperVQConfig, *, rngs: nnx.Rngs | wl.KeySequence):
        cfg = config
        self.config = cfg
        rngs = wl.KeySequence(rngs)
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(init_std=cfg.init_std, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        d = cfg.embed_dim
        conv_kw = dict(kw, init_std=cfg.conv_init_std or cfg.init_std)
        self.conv1 = Conv1d(cfg.num_mels, d, stride=1, causal=cfg.use_causal_conv, **conv_kw)
        self.conv2 = Conv1d(d, d, stride=2, causal=cfg.use_causal_conv, **conv_kw)
        table = jnp.asarray(sinusoids(cfg.max_source_positions, d), pdtype)
        self.embed_positions = Frozen(table, out_sharding=(None, "embed"), eager_sharding=False)
        self.layers = nnx.List(
            [
                wl.EncoderLayer(d, cfg.num_heads, cfg.mlp_dim, eps=cfg.norm_eps, **kw)
                for _ in range(cfg.num_layers)
            ]
        )
        self.layer_norm = wl.LayerNorm(d, eps=cfg.norm_eps, param_dtype=pdtype, rngs=rngs)
        if cfg.quantize_position is None:
            self.quantizer = None
            self.embed_positions2 = None
            return
        self.quantizer = VectorQuantizer(
            cfg.codebook_size,
            d,
            ema_decay=cfg.ema_decay,
            commit_coef=cfg.commit_coef,
            loss_scale=cfg.vq_loss_scale,
            restart_interval=cfg.restart_interval,
            init_std=cfg.init_std,
            param_dtype=pdtype,
            rngs=rngs,
        )
        rows = -(-cfg.max_source_positions // cfg.pooling_kernel)
        copy = nnx.with_partitioning(lambda *_: table[:rows], (None, "embed"), eager_sharding=False)
        self.embed_positions2 = nnx.Param(copy(None))  # the reference's init: a copy

    def __call__(
        self,
        mel: jax.Array,
        mel_mask: jax.Array,
        *,
        train: bool = False,
        restart_key: jax.Array | None = None,
        axis_name: str | None = None,
        stop_after_quantizer: bool = False,
        stop_before_quantizer: bool = False,
    ) -> EncoderOutput:
        """Encodes log-mel frames.

        Args:
          mel: [B, L, M] log-mel features (channel-last).
          mel_mask: [B, L] valid mel frames (``sample_mask[:, ::160]`` in the reference). Keys
            outside it are masked. (HF stock Whisper ignores masks and always sees 30 s windows:
            pass 3000 frames and an all-true mask to reproduce it exactly.)
          train: VQ training mode (straight-through, loss, EMA update; see VectorQuantizer).
          restart_key: PRNG key for dead-code restarts (training only).
          axis_name: data-parallel axis for VQ statistics inside shard_map/vmap.
          stop_after_quantizer: return right after the quantizer (the tokenizer path; only the
            layers up to ``quantize_position`` run, no final LayerNorm).
          stop_before_quantizer: return the frames the quantizer would see (``hidden``) instead;
            ``ids`` is None. For data-dependent codebook initialisation.

        Returns:
          EncoderOutput.

        Raises:
          ValueError: when the input is longer than the position table allows.
        """
        cfg = self.config
        if mel.ndim != 3 or mel.shape[-1] != cfg.num_mels:
            raise ValueError(f"mel must be [B, L, {cfg.num_mels}], got {mel.shape}")
        frames = -(-mel.shape[1] // STEM_STRIDE)
        if frames > cfg.max_source_positions:
            raise ValueError(
                f"{mel.shape[1]} mel frames give {frames} encoder frames, more than "
                f"max_source_positions ({cfg.max_source_positions}); split inputs into windows of "
                f"at most {cfg.max_source_positions * STEM_STRIDE} mel frames (30 s)"
            )
        dtype = jnp.dtype(cfg.dtype)
        x = jax.nn.gelu(self.conv1(mel), approximate=False)
        x = jax.nn.gelu(self.conv2(x), approximate=False)  # (B, T, D), T = ceil(L / 2)
        x = (x + self.embed_positions[:frames].astype(dtype)).astype(dtype)
        x = sharding.constrain(x, wl.ACT)
        mask = mel_mask.astype(bool)[:, ::STEM_STRIDE]  # (B, T)
        attn_mask = wl.block_causal_mask(mask, cfg.attention_block_size)
        ids = token_mask = None
        aux: dict[str, jax.Array] = {"vq_loss": jnp.zeros((), jnp.float32)}
        for idx, layer in enumerate(self.layers):
            x = _call_layer(layer, cfg.remat, x, attn_mask)
            if cfg.uses_pooling and idx + 1 == cfg.pooling_position:
                x = pool_frames(x, cfg.pooling_kernel, cfg.pooling_type)  # (B, T'', D)
                mask = mask[:, :: cfg.pooling_kernel]
                attn_mask = wl.block_causal_mask(mask, cfg.pooled_block_size)
            if idx + 1 == cfg.quantize_position:
                if stop_before_quantizer:
                    return EncoderOutput(x, mask, None, mask, aux)
                x, ids, aux = self.quantizer(
                    x, mask, train=train, restart_key=restart_key, axis_name=axis_name
                )
                token_mask = mask
                if stop_after_quantizer:
                    return EncoderOutput(x, mask, ids, token_mask, aux)
                x = x + self.embed_positions2[: x.shape[1]].astype(x.dtype)
        if stop_after_quantizer or stop_before_quantizer:
            raise ValueError("stop_after/before_quantizer needs a quantizer (quantize_position)")
        return EncoderOutput(self.layer_norm(x), mask, ids, token_mask, aux)

    def from_codes(self, ids: jax.Array, token_mask: jax.Array) -> EncoderOutput:
        """The encoder from speech tokens on: what the ASR head sees for these tokens.

        Code vectors + ``embed_positions2``, the layers after the quantizer, the final LayerNorm:
        exactly the inference path of ``__call__`` after its quantizer, so the Whisper decoder
        can transcribe tokens that did not come from audio (e.g. an LM's TTS output).

        Args:
          ids: [B, T''] int code ids.
          token_mask: [B, T''] valid tokens.

        Raises:
          ValueError: without a quantizer, or when pooling comes after the quantizer.
        """
        cfg = self.config
        if self.quantizer is None:
            raise ValueError("from_codes needs a quantizer; this config has quantize_position=None")
        if cfg.uses_pooling and cfg.pooling_position > cfg.quantize_position:
            raise ValueError(
                f"from_codes: pooling_position ({cfg.pooling_position}) after quantize_position "
                f"({cfg.quantize_position}) is not supported"
            )
        dtype = jnp.dtype(cfg.dtype)
        x = self.quantizer.lookup(ids).astype(dtype)  # (B, T'', D)
        x = x + self.embed_positions2[: x.shape[1]].astype(dtype)
        mask = token_mask.astype(bool)
        block = cfg.pooled_block_size if cfg.uses_pooling else cfg.attention_block_size
        attn_mask = wl.block_causal_mask(mask, block)
        for layer in list(self.layers)[cfg.quantize_position :]:
            x = _call_layer(layer, cfg.remat, x, attn_mask)
        aux = {"vq_loss": jnp.zeros((), jnp.float32)}
        return EncoderOutput(self.layer_norm(x), mask, ids, mask, aux)


class WhisperDecoder(nnx.Module):
    """Whisper text decoder; logits use the token embedding as output projection (tied)."""

    def __init__(self, config: WhisperVQConfig, *, rngs: nnx.Rngs | wl.KeySequence):
        cfg = config
        self.config = cfg
        rngs = wl.KeySequence(rngs)
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kw = dict(init_std=cfg.init_std, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        d = cfg.embed_dim
        init = nnx.initializers.normal(cfg.init_std)
        self.embed_tokens = wl.param(rngs, init, (cfg.vocab_size, d), ("vocab", "embed"), pdtype)
        self.embed_positions = wl.param(
            rngs, init, (cfg.max_target_positions, d), (None, "embed"), pdtype
        )
        self.layers = nnx.List(
            [
                wl.DecoderLayer(
                    d, cfg.num_decoder_heads, cfg.decoder_mlp_dim, eps=cfg.norm_eps, **kw
                )
                for _ in range(cfg.num_decoder_layers)
            ]
        )
        self.layer_norm = wl.LayerNorm(d, eps=cfg.norm_eps, param_dtype=pdtype, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        token_mask: jax.Array,
        encoded: jax.Array,
        encoded_mask: jax.Array,
    ) -> jax.Array:
        """Next-token logits.

        Args:
          tokens: [B, U] int Whisper token ids (0 <= id < vocab_size; not range-checked under jit).
          token_mask: [B, U] valid tokens (right padding).
          encoded: [B, T, D] encoder output.
          encoded_mask: [B, T] valid encoder frames.

        Returns:
          [B, U, V] float32 logits.
        """
        cfg = self.config
        u = tokens.shape[1]
        if u > cfg.max_target_positions:
            raise ValueError(
                f"{u} decoder tokens exceed max_target_positions ({cfg.max_target_positions})"
            )
        dtype = jnp.dtype(cfg.dtype)
        emb = self.embed_tokens[...]
        x = jnp.take(emb, tokens, axis=0) + self.embed_positions[:u]
        x = sharding.constrain(x.astype(dtype), wl.ACT)
        self_mask = wl.causal_mask(token_mask)
        cross_mask = jnp.broadcast_to(
            encoded_mask.astype(bool)[:, None, :], (tokens.shape[0], u, encoded.shape[1])
        )
        encoded = encoded.astype(dtype)
        for layer in self.layers:
            x = _call_layer(layer, cfg.remat, x, self_mask, encoded, cross_mask)
        x = self.layer_norm(x)
        return jnp.einsum("BUD,VD->BUV", x, emb.astype(dtype), preferred_element_type=jnp.float32)


class WhisperVQ(nnx.Module):
    """The full model: ``encoder`` (WhisperVQEncoder) and ``decoder`` (None when encoder-only)."""

    def __init__(self, config: WhisperVQConfig, *, rngs: nnx.Rngs):
        self.config = config
        keys = wl.KeySequence(rngs)
        self.encoder = WhisperVQEncoder(config, rngs=wl.KeySequence(keys))
        self.decoder = (
            WhisperDecoder(config, rngs=wl.KeySequence(keys)) if config.num_decoder_layers else None
        )

    def __call__(
        self,
        mel: jax.Array,
        mel_mask: jax.Array,
        tokens: jax.Array,
        token_mask: jax.Array,
        *,
        train: bool = False,
        restart_key: jax.Array | None = None,
        axis_name: str | None = None,
    ) -> tuple[jax.Array, EncoderOutput]:
        """ASR forward: (logits [B, U, V] float32, encoder output with the VQ aux).

        The training loss is CE(logits) + ``enc.aux["vq_loss"]`` (glm4voice.md §2.7).
        """
        if self.decoder is None:
            raise ValueError(
                "this WhisperVQ has no decoder (num_decoder_layers=0); build it with decoder "
                "layers (e.g. initialised from whisper-large-v3) for the ASR objective"
            )
        enc = self.encoder(mel, mel_mask, train=train, restart_key=restart_key, axis_name=axis_name)
        logits = self.decoder(tokens, token_mask, enc.hidden, enc.mask)
        return logits, enc

    def encode_tokens(self, mel: jax.Array, mel_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The tokenizer path: only the layers up to the quantizer run (inference mode).

        Args:
          mel: [B, L, M] log-mel features.
          mel_mask: [B, L] valid mel frames.

        Returns:
          (ids [B, T''] int32, token_mask [B, T''] bool), T'' = ceil(ceil(L / 2) / pooling_kernel).
        """
        if self.encoder.quantizer is None:
            raise ValueError(
                "encode_tokens needs a quantizer; this config has quantize_position=None"
            )
        out = self.encoder(mel, mel_mask, stop_after_quantizer=True)
        return out.ids, out.token_mask
