"""Waveforms -> speech tokens with a WhisperVQ model: the reference extraction path.

Ref: GLM-4-Voice ``speech_tokenizer/utils.py`` ``extract_speech_token`` @ eb00ce9 (glm4voice.md
§2.10, §11.1). For each utterance (16 kHz mono):

1. cut into 30 s windows (480000 samples; the last one shorter);
2. pad every window of the utterance with zeros to the longest window rounded up to a multiple of
   ``samples_per_token`` (1280 = 160 x 2 x 4): the feature extractor's ``padding="longest"``,
   ``pad_to_multiple_of`` for one utterance per call;
3. log-mel of each padded window (the clamp uses the padded window's maximum); the frame mask is
   ``sample_mask[::160]``, i.e. frame l is valid iff 160 l < window length;
4. encoder up to the quantizer; token mask = ``mask[::2][::pooling_kernel]``;
5. keep the valid tokens and concatenate the windows.

So an utterance of n samples (<= 30 s) gives ceil(n / 1280) tokens at 12.5 Hz. Windows of several
utterances are batched together; each row keeps its own padded length for the log-mel (``lengths``
of ``log_mel_jax``), so batching does not change the tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glmvoice_jax import audio, checkpoint
from glmvoice_jax.convert.whisper import hf_whisper as convert_whisper
from glmvoice_jax.models.whisper_vq import HOP_LENGTH, WhisperVQ, WhisperVQConfig

WINDOW_SAMPLES = 30 * audio.SAMPLE_RATE
_BUCKET_SAMPLES = 2 * audio.SAMPLE_RATE  # pad batch lengths to 2 s steps: fewer recompiles


@nnx.jit(static_argnames=("n_mels",))
def _encode(model: WhisperVQ, wav, lengths, frame_limits, n_mels: int):
    mel = audio.log_mel_jax(wav, lengths, n_mels=n_mels)  # (B, L, M)
    mel_mask = jnp.arange(mel.shape[1])[None, :] < frame_limits[:, None]  # (B, L)
    return model.encode_tokens(mel, mel_mask)


def _windows(wav: np.ndarray, index: int) -> list[np.ndarray]:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"waveform {index} must be 1-D (mono, 16 kHz), got shape {wav.shape}")
    if wav.size == 0:
        raise ValueError(f"waveform {index} is empty")
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"waveform {index} holds NaN or Inf samples")
    return [wav[s : s + WINDOW_SAMPLES] for s in range(0, wav.shape[0], WINDOW_SAMPLES)]


def local_mesh() -> Mesh:
    """A 1-D ("data",) mesh over this process's devices: tokenizing is data parallel."""
    return jax.make_mesh(
        (jax.local_device_count(),),
        ("data",),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.local_devices(),
    )


def load_model(path: str, mesh: Mesh | None = None) -> tuple[WhisperVQConfig, WhisperVQ]:
    """A tokenizer model from a checkpoint, its state replicated over ``mesh`` (or one device).

    Args:
      path: a HF directory (config.json + safetensors: the released WhisperVQEncoder, a
        WhisperVQForConditionalGeneration) or an Orbax checkpoint of the speech-tokenizer trainer
        (a training workdir, its checkpoints/ directory or one step directory).
      mesh: devices to replicate the weights on.

    Raises:
      ValueError / FileNotFoundError: naming the path, when it holds no tokenizer checkpoint.
    """
    target = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
    if convert_whisper.is_hf_checkpoint(path):
        cfg, model = convert_whisper.load_checkpoint(path)
        if target is not None:
            graphdef, state = nnx.split(model)
            model = nnx.merge(graphdef, jax.device_put(state, target))
    else:
        cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(path))
        if not isinstance(cfg, WhisperVQConfig):
            raise ValueError(
                f"checkpoint {path} holds a {type(cfg).__name__}, not a speech tokenizer "
                "(WhisperVQConfig)"
            )
        graphdef, abs_state = nnx.split(nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0))))
        sharding = target or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            nnx.to_pure_dict(abs_state),
        )
        model = nnx.merge(graphdef, checkpoint.restore_params(path, abstract))
    if cfg.quantize_position is None:
        raise ValueError(
            f"checkpoint {path} has no quantizer (quantize_position=None, e.g. stock Whisper); "
            "tokenizing needs a trained speech tokenizer"
        )
    return cfg, model


def tokenize_waveforms(
    model: WhisperVQ,
    wavs: list[np.ndarray],
    *,
    batch_size: int = 16,
    matmul_precision: str = "highest",
    mesh: Mesh | None = None,
) -> list[np.ndarray]:
    """Speech tokens of 16 kHz mono waveforms, as the reference ``extract_speech_token``.

    Args:
      model: a WhisperVQ with a quantizer (only the layers up to it run).
      wavs: float waveforms at 16 kHz in [-1, 1], any lengths.
      batch_size: windows per device batch.
      matmul_precision: ``jax.default_matmul_precision`` for the encoder. "highest" keeps float32
        matmuls on TPU/GPU (whose defaults are bf16/tf32 passes), so ids match the reference.
      mesh: a 1-D ("data",) mesh (``local_mesh``) to split every batch over; the model's state
        must be replicated on it (``load_model(path, mesh)``). None runs on the default device.

    Returns:
      One int32 array of token ids per waveform (ceil(n / samples_per_token) ids per 30 s window).

    Raises:
      ValueError: for a model without quantizer, or empty / non-1-D / non-finite waveforms.
    """
    cfg = model.config
    if cfg.quantize_position is None:
        raise ValueError("tokenize_waveforms needs a model with a quantizer (quantize_position)")
    stride = cfg.samples_per_token
    # (utterance index, window samples, padded length) per window.
    rows: list[tuple[int, np.ndarray, int]] = []
    for i, wav in enumerate(wavs):
        windows = _windows(wav, i)
        padded = -(-max(w.shape[0] for w in windows) // stride) * stride
        rows.extend((i, w, padded) for w in windows)
    order = sorted(range(len(rows)), key=lambda r: rows[r][2])  # similar lengths together
    tokens: dict[int, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        longest = max(rows[r][2] for r in chunk)
        width = min(-(-longest // _BUCKET_SAMPLES) * _BUCKET_SAMPLES, WINDOW_SAMPLES)
        width = max(width, longest)
        height = 1 << (len(chunk) - 1).bit_length()  # batch padded to a power of two
        if mesh is not None:
            height = -(-height // mesh.size) * mesh.size  # a multiple of the device count
        wav = np.zeros((height, width), np.float32)
        lengths = np.full((height,), stride, np.int32)  # dummy rows: any valid length
        frame_limits = np.zeros((height,), np.int32)
        for b, r in enumerate(chunk):
            _, window, padded = rows[r]
            wav[b, : window.shape[0]] = window
            lengths[b] = padded
            frame_limits[b] = -(-window.shape[0] // HOP_LENGTH)  # frame l valid iff 160 l < n
        inputs = (wav, lengths, frame_limits)
        if mesh is not None:
            inputs = tuple(
                jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))) for x in inputs
            )
        with jax.default_matmul_precision(matmul_precision):
            ids, mask = _encode(model, *inputs, n_mels=cfg.num_mels)
        ids, mask = np.asarray(jax.device_get(ids)), np.asarray(jax.device_get(mask))
        for b, r in enumerate(chunk):
            tokens[r] = ids[b][mask[b]].astype(np.int32)
    out: list[list[np.ndarray]] = [[] for _ in wavs]
    for r, (i, _, _) in enumerate(rows):  # windows in time order
        out[i].append(tokens[r])
    return [np.concatenate(parts) for parts in out]
