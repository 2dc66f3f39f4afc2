"""The speech decoder as one ``jax.export`` function: tokens (N,) int32 → waveform, any N.

Ref: decoder.md §2 (frames from tokens, export note), §14 (deterministic mode), §18 (export
contract); jax.export shape polymorphism. Used by ``glmvoice-export-decoder``.

The token count N is symbolic, so one artifact serves every length without padding (padding is
not numerically neutral, decoder.md §13.2). The mel length T must then be a dimension expression
in N: the exact ⌊N · 441/64⌋ (at 12.5 Hz) replaces the float32 rule of §2. The two agree for
N ≤ 3391 and first differ at N = 3392 (23373 vs 23372 frames), so the artifact carries the
constraint N ≤ ``exact_token_limit`` and rejects longer inputs at call time with a message.
Inside, lengths that were numpy constants per shape become jnp computations (same integers;
the relative-position sin/cos and the NSF phase prefix sum round slightly differently), see
docs/decoder_export.md for the measured difference.

Axes: N tokens, T = ⌊441 N / 64⌋ mel frames, L = 256·T samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models.speech_decoder.layers import frames_per_token
from glmvoice_jax.models.speech_decoder.speech_decoder import SpeechDecoder

_SEARCH_TOKENS = 1_000_000


def exact_token_limit(input_frame_rate: float = 12.5, search: int = _SEARCH_TOKENS) -> int:
    """Largest N such that ⌊n·p/q⌋ equals the float32 frame rule for every n in 1..N.

    Args:
      input_frame_rate: token rate (12.5 Hz).
      search: the largest N examined; returned when no mismatch is found up to it.

    Returns:
      3391 at 12.5 Hz.
    """
    f32 = np.float32
    n = np.arange(1, search + 1, dtype=np.int64)
    seconds = n.astype(f32) / f32(input_frame_rate)
    rule = ((seconds * f32(22050)).astype(f32) / f32(256)).astype(np.int64)
    ratio = frames_per_token(input_frame_rate)
    exact = (n * ratio.numerator) // ratio.denominator
    bad = np.flatnonzero(rule != exact)
    return int(bad[0]) if bad.size else search  # bad[0] is the index of N = bad[0] + 1


def export_decoder(
    model: SpeechDecoder, *, max_tokens: int | None = None, platforms: Sequence[str] = ("cpu",)
) -> jax.export.Exported:
    """Exports tokens → waveform in deterministic mode with a symbolic token count.

    The parameters are embedded as constants. The exported function takes tokens (N,) int32
    with 1 ≤ N ≤ max_tokens and returns float32 (256·⌊441 N / 64⌋,) at the vocoder's rate; it
    returns all-NaN audio when an id lies outside [0, vocab_size) (an artifact cannot raise).

    Args:
      model: the decoder.
      max_tokens: the largest accepted N; default and upper bound: ``exact_token_limit``.
      platforms: lowering platforms, e.g. ("cpu",) or ("cpu", "cuda").

    Returns:
      The ``jax.export.Exported``; ``.serialize()`` gives the artifact bytes.

    Raises:
      ValueError: ``max_tokens`` outside [1, exact_token_limit], or a Griffin-Lim vocoder.
    """
    cfg = model.config
    if cfg.vocoder != "hift":
        raise ValueError(
            f"this decoder's vocoder is {cfg.vocoder!r}, a host-side mel inversion that "
            "jax.export cannot serialise; export a decoder with a HiFT vocoder (train with "
            "vocoder='hift'), or decode with glmvoice-decode"
        )
    limit = exact_token_limit(cfg.flow.input_frame_rate)
    max_tokens = limit if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= limit:
        raise ValueError(
            f"max_tokens = {max_tokens} is outside [1, {limit}]: above {limit} tokens the exact "
            f"frame count ⌊N · {frames_per_token(cfg.flow.input_frame_rate)}⌋ of a symbolic "
            "length differs from the reference's float32 rule (decoder.md §2); decode longer "
            "inputs with glmvoice-decode or in chunks"
        )
    graphdef, state = nnx.split(model)
    vocab = cfg.flow.vocab_size

    def decode(tokens: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, state)
        ok = jnp.all((tokens >= 0) & (tokens < vocab))
        mel = m.flow.inference(jnp.clip(tokens, 0, vocab - 1)[None])  # (1, T, M)
        wav, _ = m.hift(mel)  # (1, L)
        return jnp.where(ok, wav[0], jnp.nan)

    (n,) = jax.export.symbolic_shape("N", constraints=(f"N <= {max_tokens}",))
    with jax.default_matmul_precision("highest"):
        return jax.export.export(jax.jit(decode), platforms=tuple(platforms))(
            jax.ShapeDtypeStruct((n,), jnp.int32)
        )
