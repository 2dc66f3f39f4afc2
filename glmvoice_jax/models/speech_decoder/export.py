"""The speech decoder as ``jax.export`` functions: tokens (N,) int32 → waveform, any N.

``export_decoder`` exports the whole utterance; ``export_stream`` the streaming chunk (flow and
HiFT separately, for a caller that runs ``stream.Token2Wav``'s state machine itself).

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

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens, frames_per_token
from glmvoice_jax.models.speech_decoder.speech_decoder import SpeechDecoder
from glmvoice_jax.models.speech_decoder.stream import SOURCE_CACHE_LEN

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


@dataclasses.dataclass(frozen=True)
class StreamExport:
    """The streaming chunk as three ``jax.export`` functions (deterministic mode, §14).

    The state machine of ``stream.Token2Wav`` (cross-fade, caches) stays on the caller's side in
    numpy; these are its two jitted pieces, with symbolic lengths so one artifact serves every
    chunk and history size:

    * flow: (tokens (N,) int32 = prompt + new ids, cond (T, M) float32 = the earlier mels, then
      zeros) → mel (T, M) of every frame, T = ⌊441 N / 64⌋; the caller drops the P prompt frames.
    * hift: mel (T, M) → (speech (256 T,), source (256 T,)): a stream's first call.
    * hift_cached: (mel (T, M), cache_source (256,)) → (speech, source): every later call.

    ``token2wav_fns`` adapts them to ``Token2Wav``'s flow_fn / hift_fn.
    """

    flow: jax.export.Exported
    hift: jax.export.Exported
    hift_cached: jax.export.Exported


def export_stream(
    model: SpeechDecoder,
    *,
    max_tokens: int | None = None,
    platforms: Sequence[str] = ("cpu",),
    matmul_dtype: str | None = None,
    n_steps: int | None = None,
) -> StreamExport:
    """Exports the per-chunk flow and HiFT of streaming (``StreamExport``).

    Unlike ``export_decoder`` the flow takes checked ids: ``Token2Wav``'s caller validates them
    (``check_tokens``) before a chunk is formed.

    Args:
      model: the decoder (HiFT vocoder).
      max_tokens: the largest prompt + new token count of one flow call; default and upper
        bound: ``exact_token_limit``.
      platforms: lowering platforms.
      matmul_dtype: the flow's fast-mode option (None = exact).
      n_steps: the flow's Euler steps (None = 10, exact).

    Returns:
      The three exported functions.

    Raises:
      ValueError: as ``export_decoder``.
    """
    cfg = model.config
    if cfg.vocoder != "hift":
        raise ValueError(f"this decoder's vocoder is {cfg.vocoder!r}; jax.export needs HiFT")
    limit = exact_token_limit(cfg.flow.input_frame_rate)
    max_tokens = limit if max_tokens is None else max_tokens
    if not 1 <= max_tokens <= limit:
        raise ValueError(f"max_tokens = {max_tokens} is outside [1, {limit}] (see export_decoder)")
    graphdef, state = nnx.split(model)
    m_bins = cfg.flow.output_size

    def flow(tokens: jax.Array, cond: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, state)
        mel = m.flow.sample(tokens[None], cond[None], matmul_dtype=matmul_dtype, n_steps=n_steps)
        return mel[0]  # (T, M)

    def hift(mel: jax.Array) -> tuple[jax.Array, jax.Array]:
        wav, s = nnx.merge(graphdef, state).hift(mel[None])
        return wav[0], s[0]  # (L,), (L,)

    def hift_cached(mel: jax.Array, cache_source: jax.Array) -> tuple[jax.Array, jax.Array]:
        wav, s = nnx.merge(graphdef, state).hift(mel[None], cache_source[None])
        return wav[0], s[0]  # (L,), (L,)

    ratio = frames_per_token(cfg.flow.input_frame_rate)
    n, t_flow = jax.export.symbolic_shape(
        f"N, floordiv({ratio.numerator} * N, {ratio.denominator})",
        constraints=(f"N <= {max_tokens}",),
    )
    (t,) = jax.export.symbolic_shape("T")
    platforms = tuple(platforms)
    f32 = jnp.float32
    with jax.default_matmul_precision("highest"):
        return StreamExport(
            flow=jax.export.export(jax.jit(flow), platforms=platforms)(
                jax.ShapeDtypeStruct((n,), jnp.int32),
                jax.ShapeDtypeStruct((t_flow, m_bins), f32),
            ),
            hift=jax.export.export(jax.jit(hift), platforms=platforms)(
                jax.ShapeDtypeStruct((t, m_bins), f32)
            ),
            hift_cached=jax.export.export(jax.jit(hift_cached), platforms=platforms)(
                jax.ShapeDtypeStruct((t, m_bins), f32),
                jax.ShapeDtypeStruct((SOURCE_CACHE_LEN,), f32),
            ),
        )


def token2wav_fns(exported: StreamExport, input_frame_rate: float = 12.5) -> tuple:
    """(flow_fn, hift_fn) for ``stream.Token2Wav`` that call the exported pieces.

    flow_fn pads prompt_feat with zeros to T frames (what ``Flow.inference`` puts in ``cond``)
    and returns the frames after the P prompt frames, so a ``Token2Wav`` built on these gives
    what the jitted model gives.
    """

    def flow_fn(tokens: np.ndarray, prompt_tokens: np.ndarray, prompt_feat: np.ndarray):
        ids = np.concatenate([prompt_tokens, tokens]).astype(np.int32)  # (N,)
        cond = np.zeros((frames_from_tokens(ids.size, input_frame_rate), prompt_feat.shape[1]))
        cond[: prompt_feat.shape[0]] = prompt_feat  # (T, M)
        mel = np.asarray(exported.flow.call(ids, cond.astype(np.float32)))
        return mel[prompt_feat.shape[0] :]  # (T - P, M)

    def hift_fn(mel: np.ndarray, cache_source: np.ndarray | None):
        mel = np.asarray(mel, np.float32)
        if cache_source is None:
            speech, source = exported.hift.call(mel)
        else:
            speech, source = exported.hift_cached.call(mel, np.asarray(cache_source, np.float32))
        return np.asarray(speech), np.asarray(source)

    return flow_fn, hift_fn
