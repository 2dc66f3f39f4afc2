"""The whole GLM-4-Voice speech decoder (flow + HiFT) and the offline ``tokens_to_audio`` entry.

Ref: decoder.md §3 + §8 (data flow), §12.2 ``offline_inference`` (one call, no prompt,
finalize=True), §13.5 (id checks), §14 (deterministic mode); GLM-4-Voice @ eb00ce9
``flow_inference.py`` (``AudioDecoder``).

Axes: B batch, N tokens, T mel frames, M mel bins, L = 256·T samples, G NSF sines.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models.speech_decoder.config import DecoderConfig
from glmvoice_jax.models.speech_decoder.flow import Flow
from glmvoice_jax.models.speech_decoder.hift import HiFT
from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens
from glmvoice_jax.models.speech_decoder.mel import GriffinLimVocoder

# The opt-in fast preset of ``tokens_to_audio`` (and, with a bounded history, of streaming):
# bf16 transformer matmuls and 5 Euler steps instead of 10; chosen from the speed and the
# distance from exact mode measured in docs/decoder_speed.md. Exact f32, 10 steps stays default.
FAST_MODE = {"matmul_dtype": "bfloat16", "n_steps": 5}


class SpeechDecoder(nnx.Module):
    """``flow`` (tokens → mel) and ``hift``, the vocoder slot (mel → waveform).

    ``config.vocoder`` "hift": the HiFT network; "griffin_lim": ``mel.GriffinLimVocoder`` (no
    parameters; the baseline of decoders trained at tiny scale). Both are called alike.
    """

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        self.flow = Flow(config.flow, rngs=rngs)
        if config.vocoder == "griffin_lim":
            self.hift = GriffinLimVocoder()
        else:
            self.hift = HiFT(config.hift, rngs=rngs)


def check_tokens(tokens: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """Validates speech-token ids (``nnx.Embed`` would silently gather garbage).

    Args:
      tokens: a 1-D sequence of codebook ids.
      vocab_size: the codebook size.

    Returns:
      (N,) int32 array.

    Raises:
      ValueError: empty input, wrong rank, or an id outside [0, vocab_size).
    """
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D list of ids, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("tokens is empty: the decoder needs at least one speech token")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"token id {int(arr[i])} at position {i} is outside the codebook of size "
            f"{vocab_size} (valid ids: 0..{vocab_size - 1}; {bad.size} bad id(s) in total)"
        )
    return arr.astype(np.int32)


@nnx.jit(static_argnames=("matmul_dtype", "n_steps"))
def _decode(
    model: SpeechDecoder,
    tokens: jax.Array,
    flow_noise: jax.Array | None,
    phases: jax.Array | None,
    nsf_noise: jax.Array | None,
    matmul_dtype: str | None = None,
    n_steps: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    mel = model.flow.inference(
        tokens, noise=flow_noise, matmul_dtype=matmul_dtype, n_steps=n_steps
    )  # (1, T, M)
    wav, _ = model.hift(mel, phases=phases, noise=nsf_noise)  # (1, L)
    return mel, wav


def tokens_to_audio(
    model: SpeechDecoder,
    tokens: Sequence[int] | np.ndarray,
    *,
    key: jax.Array | None = None,
    matmul_dtype: str | None = None,
    n_steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Offline decode of one utterance (``offline_inference``): tokens → (mel, waveform).

    Compiled once per token count (lengths are never padded: padding changes the result,
    decoder.md §13.2). Matmuls and convs run at 'highest' precision, as parity needs on GPU.

    Args:
      model: the decoder.
      tokens: 1-D codebook ids in [0, vocab_size).
      key: PRNG key for the flow noise z, the NSF phases and the NSF noise. None → the
        deterministic mode of §14 (z = 0, no NSF noise, zero phases); dropout is always off.
      matmul_dtype: None = exact float32 (the default; what parity tests check). "bfloat16" =
        opt-in fast mode: the flow estimator's transformer matmuls take bfloat16 inputs with
        float32 accumulation (docs/decoder_speed.md has its speed and mel distance).
      n_steps: Euler steps of the flow; None = the config's 10 (exact). Fewer = opt-in fast
        mode, same cosine t-schedule; ``FAST_MODE`` is the measured preset.

    Returns:
      (mel [M, T] float32, wav [256·T] float32 at 22050 Hz), T = frames_from_tokens(N).

    Raises:
      ValueError: empty tokens, an id outside the codebook, or ``n_steps`` < 1.
    """
    cfg = model.config
    ids = check_tokens(tokens, cfg.flow.vocab_size)
    t_frames = frames_from_tokens(ids.size, cfg.flow.input_frame_rate)
    flow_noise = phases = nsf_noise = None
    if key is not None:
        k_z, k_phase, k_noise = jax.random.split(key, 3)
        g = cfg.hift.nb_harmonics + 1
        flow_noise = jax.random.normal(k_z, (1, t_frames, cfg.flow.output_size), jnp.float32)
        phases = jax.random.uniform(k_phase, (1, g), jnp.float32, -np.pi, np.pi)
        nsf_noise = jax.random.normal(
            k_noise, (1, t_frames * cfg.hift.upsample_factor, g), jnp.float32
        )
    with jax.default_matmul_precision("highest"):
        mel, wav = _decode(
            model, jnp.asarray(ids)[None], flow_noise, phases, nsf_noise, matmul_dtype, n_steps
        )
    return np.asarray(mel[0]).T, np.asarray(wav[0])
