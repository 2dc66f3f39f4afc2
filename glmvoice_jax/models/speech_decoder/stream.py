"""Chunked (streaming) decoding as GLM-4-Voice's ``AudioDecoder.token2wav`` + web_demo driver.

Ref: decoder.md §12 (token2wav state machine, drivers, the §12.3 duplicated-frame quirk);
GLM-4-Voice @ eb00ce9 ``flow_inference.py`` (``AudioDecoder.token2wav``, ``fade_in_out``) and
``web_demo.py`` (block sizes 25, 50, 100, 150, 200, 200, ...).

Every chunk re-runs the flow on the whole history (prompt tokens + their returned mels as
``cond``), cross-fades the first 34 new frames with the held-back overlap (a symmetric Hamming
window on log-mel values), prepends the 1-frame HiFT cache and overwrites the first 256 source
samples with the cached source. The state machine runs on the host in numpy; flow and HiFT are
jitted per shape (``export.export_stream`` exports them for callers without the model). Opt-in
fast options (docs/decoder_speed.md): ``history_tokens`` bounds the history the flow re-runs on,
``n_steps`` / ``matmul_dtype`` as in ``tokens_to_audio``; ``STREAMING_FAST_MODE`` is the preset.

Deterministic mode (§14: z = 0, no NSF noise, zero phases) unless a PRNG key is
given; then every call draws its own flow noise, harmonic phases and NSF noise from
fold_in(key, call index) (the reference reseeds torch with 42 per call; JAX cannot reproduce
that stream).

Axes: N tokens, T mel frames, M mel bins, L samples.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens
from glmvoice_jax.models.speech_decoder.speech_decoder import (
    FAST_MODE,
    SpeechDecoder,
    check_tokens,
)

MEL_OVERLAP_LEN = 34  # int(5 / 12.5 * 22050 / 256): 5 tokens of mel
MEL_CACHE_LEN = 1
SOURCE_CACHE_LEN = 256
WEB_DEMO_BLOCK_SIZES = (25, 50, 100, 150, 200)  # the last size repeats
MIN_HISTORY_TOKENS = 10  # bounded-history streaming: one encoder block, ≥ 34 + 34 cond frames
# The opt-in fast preset of ``stream_decode``: bf16 matmuls, 4 Euler steps (one fewer than
# FAST_MODE: streaming redoes up to 25 history tokens per chunk, and with 5 steps it measured
# RTF 1.22 on 2 quiet cores, with 4 steps 0.96) and a bounded history of 25 tokens
# (docs/decoder_speed.md has its speed and its distance from exact streaming).
STREAMING_FAST_MODE = {**FAST_MODE, "n_steps": 4, "history_tokens": 25}


@nnx.jit(static_argnames=("matmul_dtype", "n_steps"))
def _flow(
    model: SpeechDecoder,
    tokens: jax.Array,
    prompt_tokens: jax.Array | None,
    prompt_feat: jax.Array | None,
    noise: jax.Array | None,
    matmul_dtype: str | None = None,
    n_steps: int | None = None,
) -> jax.Array:
    mel = model.flow.inference(
        tokens, prompt_tokens, prompt_feat, noise=noise, matmul_dtype=matmul_dtype, n_steps=n_steps
    )
    return mel[0]  # (T_new, M)


@nnx.jit
def _hift(
    model: SpeechDecoder,
    mel: jax.Array,
    cache_source: jax.Array | None,
    phases: jax.Array | None,
    noise: jax.Array | None,
) -> tuple[jax.Array, jax.Array]:
    wav, s = model.hift(mel[None], cache_source, phases=phases, noise=noise)
    return wav[0], s[0]  # (L,), (L,)


class Token2Wav:
    """Per-utterance state of ``AudioDecoder.token2wav`` (mel overlap + HiFT cache, §12.1)."""

    def __init__(
        self,
        model: SpeechDecoder,
        flow_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
        hift_fn: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]
        | None = None,
        key: jax.Array | None = None,
        matmul_dtype: str | None = None,
        n_steps: int | None = None,
    ):
        """Creates an empty state.

        Args:
          model: the decoder.
          flow_fn: (tokens (N_new,), prompt_tokens (N_prompt,), prompt_feat (P, M)) → new mel
            (T_new, M); default: the model's flow, jitted per shape. Tests inject stubs.
          hift_fn: (mel (T, M), cache_source (K,) or None) → (speech (L,), source (L,));
            default: the model's HiFT, jitted per shape.
          key: PRNG key for the default flow / HiFT noise; None → deterministic mode (§14).
          matmul_dtype: the default flow's estimator matmul inputs: None = exact float32
            (parity), "bfloat16" = fast mode (``tokens_to_audio``).
          n_steps: the default flow's Euler steps; None = the config's 10 (exact).
        """
        self.model = model
        self.flow_fn = flow_fn or self._flow
        self.hift_fn = hift_fn or self._hift
        self.window = np.hamming(2 * MEL_OVERLAP_LEN)  # float64, as the reference's tensor
        self.overlap: np.ndarray | None = None  # (34, M)
        self.cache_mel: np.ndarray | None = None  # (1, M)
        self.cache_source: np.ndarray | None = None  # (256,)
        self.key = key
        self.matmul_dtype = matmul_dtype
        self.n_steps = n_steps
        self.calls = 0  # token2wav calls so far: the key of call i is fold_in(key, i)

    def __call__(
        self,
        tokens: np.ndarray,
        prompt_tokens: np.ndarray,
        prompt_feat: np.ndarray,
        finalize: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One ``token2wav`` call.

        Args:
          tokens: (N_new,) new ids.
          prompt_tokens: (N_prompt,) all earlier ids.
          prompt_feat: (P, M) earlier mels copied into ``cond``.
          finalize: emit everything and reset the state.

        Returns:
          (speech (L,), mel (T, M)): the emitted samples and the returned mel (which includes
          the prepended cache frame from the second call on, as in the reference).
        """
        mel = np.array(self.flow_fn(tokens, prompt_tokens, prompt_feat))  # (T_new, M)
        if self.overlap is not None:
            # fade_in_out: the reference multiplies by a float64 window, then stores float32.
            k = MEL_OVERLAP_LEN
            faded = mel[:k] * self.window[:k, None] + self.overlap[-k:] * self.window[k:, None]
            mel[:k] = faded.astype(np.float32)
        cache_source = None
        if self.cache_mel is not None:
            mel = np.concatenate([self.cache_mel, mel], axis=0)
            cache_source = self.cache_source
        if not finalize:
            self.overlap = mel[-MEL_OVERLAP_LEN:]
            mel = mel[:-MEL_OVERLAP_LEN]
        speech, source = self.hift_fn(mel, cache_source)
        self.calls += 1
        if finalize:
            self.overlap = self.cache_mel = self.cache_source = None
            return speech, mel
        self.cache_mel = mel[-MEL_CACHE_LEN:]
        self.cache_source = source[-SOURCE_CACHE_LEN:]
        return speech[:-SOURCE_CACHE_LEN], mel

    def _keys(self) -> jax.Array | None:
        """(3,) keys (flow z, phases, NSF noise) of the current call, or None."""
        if self.key is None:
            return None
        return jax.random.split(jax.random.fold_in(self.key, self.calls), 3)

    def _flow(
        self, tokens: np.ndarray, prompt_tokens: np.ndarray, prompt_feat: np.ndarray
    ) -> np.ndarray:
        noise = None
        keys = self._keys()
        if keys is not None:
            cfg = self.model.config.flow
            t_frames = frames_from_tokens(tokens.size + prompt_tokens.size, cfg.input_frame_rate)
            noise = jax.random.normal(keys[0], (1, t_frames, cfg.output_size), jnp.float32)
        with jax.default_matmul_precision("highest"):
            mel = _flow(
                self.model,
                jnp.asarray(tokens)[None],
                jnp.asarray(prompt_tokens)[None] if prompt_tokens.size else None,
                jnp.asarray(prompt_feat)[None] if prompt_feat.shape[0] else None,
                noise,
                self.matmul_dtype,
                self.n_steps,
            )
        return np.asarray(mel)

    def _hift(
        self, mel: np.ndarray, cache_source: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        cache = None if cache_source is None else jnp.asarray(cache_source)[None]
        phases = noise = None
        keys = self._keys()
        if keys is not None:
            cfg = self.model.config.hift
            g = cfg.nb_harmonics + 1
            phases = jax.random.uniform(keys[1], (1, g), jnp.float32, -np.pi, np.pi)
            noise = jax.random.normal(
                keys[2], (1, mel.shape[0] * cfg.upsample_factor, g), jnp.float32
            )
        with jax.default_matmul_precision("highest"):
            speech, source = _hift(self.model, jnp.asarray(mel), cache, phases, noise)
        return np.asarray(speech), np.asarray(source)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """What one streaming call did (the columns of decoder.md §12.3's table)."""

    new_tokens: int
    prompt_tokens: int
    prompt_feat_frames: int
    returned_mel_frames: int
    samples: int
    finalize: bool


def stream_decode(
    model: SpeechDecoder,
    tokens: Sequence[int] | np.ndarray,
    block_sizes: Sequence[int] = WEB_DEMO_BLOCK_SIZES,
    parity: bool = True,
    token2wav: Token2Wav | None = None,
    *,
    key: jax.Array | None = None,
    matmul_dtype: str | None = None,
    n_steps: int | None = None,
    history_tokens: int | None = None,
    on_chunk: Callable[[np.ndarray, np.ndarray, Chunk], None] | None = None,
) -> tuple[np.ndarray, list[Chunk]]:
    """Decodes like web_demo.py: flush full blocks, then the remainder with finalize=True.

    As in the reference, if the tokens end exactly on a block boundary no finalize call happens
    and the held-back 34 frames + 256 samples are never emitted (§12.2).

    Args:
      model: the decoder.
      tokens: 1-D codebook ids.
      block_sizes: chunk sizes; the last one repeats.
      parity: True reproduces the reference's prompt_feat (every returned mel, including the
        duplicated cache frame, §12.3); False drops that duplicate ("fixed mode").
      token2wav: the state machine to drive; default ``Token2Wav(model, key=key)``.
      key: PRNG key of the default state machine; None → deterministic mode (§14).
      matmul_dtype: of the default state machine: None = exact (parity), "bfloat16" = fast.
      n_steps: Euler steps of the default state machine; None = the config's 10 (exact).
      history_tokens: None (exact, the reference) re-runs the flow on the whole history for
        every chunk. H ≥ ``MIN_HISTORY_TOKENS`` gives the flow only the last H earlier tokens
        and the matching tail of the earlier mels (``history_window``), so a chunk costs at
        most H + block tokens however long the stream is (opt-in; its distance from exact
        streaming is in docs/decoder_speed.md). ``Chunk.prompt_tokens`` and
        ``prompt_feat_frames`` then count what the flow was given.
      on_chunk: called after every call as on_chunk(speech, mel, chunk) with the samples just
        emitted (L,), the returned mel (T, M) and the call's ``Chunk``; the emitted samples are
        the audio of ``emitted_mel(mel, chunk)``.

    Returns:
      (the concatenated emitted waveform, one ``Chunk`` per call).

    Raises:
      ValueError: empty tokens, an id outside the codebook, a non-positive block size, or
        ``history_tokens`` < ``MIN_HISTORY_TOKENS``.
    """
    ids = check_tokens(tokens, model.config.flow.vocab_size)
    if not block_sizes or min(block_sizes) <= 0:
        raise ValueError(f"block_sizes must be positive, got {tuple(block_sizes)}")
    if history_tokens is not None and history_tokens < MIN_HISTORY_TOKENS:
        raise ValueError(
            f"history_tokens must be at least {MIN_HISTORY_TOKENS} (the held-back overlap is 5 "
            f"tokens of mel), got {history_tokens}; None keeps the whole history (exact)"
        )
    frame_rate = model.config.flow.input_frame_rate
    sizes = itertools.chain(block_sizes, itertools.repeat(block_sizes[-1]))
    state = token2wav or Token2Wav(model, key=key, matmul_dtype=matmul_dtype, n_steps=n_steps)
    n_mels = model.config.flow.output_size
    feats: list[np.ndarray] = []
    speech: list[np.ndarray] = []
    chunks: list[Chunk] = []
    start = 0
    while start < ids.size:
        size = next(sizes)
        finalize = start + size > ids.size  # only the partial remainder is final
        if finalize:
            size = ids.size - start
        prompt_feat = np.concatenate(feats, axis=0) if feats else np.zeros((0, n_mels), np.float32)
        first_token, first_frame = history_window(
            start, size, prompt_feat.shape[0], history_tokens, frame_rate
        )
        prompt_feat = prompt_feat[first_frame:]  # (P_window, M)
        prompt = ids[first_token:start]
        wav, mel = state(ids[start : start + size], prompt, prompt_feat, finalize)
        chunks.append(
            Chunk(size, prompt.size, prompt_feat.shape[0], mel.shape[0], wav.shape[0], finalize)
        )
        duplicate = not parity and len(chunks) > 1
        feats.append(mel[MEL_CACHE_LEN:] if duplicate else mel)
        speech.append(wav)
        if on_chunk is not None:
            on_chunk(wav, mel, chunks[-1])
        start += size
    return np.concatenate(speech), chunks


def history_window(
    start: int,
    size: int,
    prompt_frames: int,
    history_tokens: int | None,
    input_frame_rate: float = 12.5,
) -> tuple[int, int]:
    """First prompt token and first prompt-mel frame that a bounded-history chunk keeps.

    The flow returns T(prompt + new) - P frames. Keeping the last H tokens and dropping the
    first T(start + size) - T(H + size) prompt frames leaves that count unchanged, so the
    overlap / cache state machine sees the same shapes as in exact streaming, and the kept
    frames end where the full prompt_feat ends: parity mode's duplicated frame (decoder.md
    §12.3) stays where the reference puts it, relative to the new chunk. Frame counts are
    floored per call, so the kept mel may start up to one frame off the kept tokens' first
    frame; the measured effect is part of the distance in docs/decoder_speed.md.

    Args:
      start: tokens already decoded (the full prompt length).
      size: new tokens of this chunk.
      prompt_frames: frames of the full prompt_feat (all earlier returned mels).
      history_tokens: H, or None for the whole history.
      input_frame_rate: token rate (12.5 Hz).

    Returns:
      (first_token, first_frame): prompt_tokens = ids[first_token:start] and
      prompt_feat = full_prompt_feat[first_frame:]; (0, 0) when the whole history fits.

    Raises:
      ValueError: the window would need more mel frames than the prompt has (H too small).
    """
    if history_tokens is None or start <= history_tokens:
        return 0, 0
    first_frame = frames_from_tokens(start + size, input_frame_rate) - frames_from_tokens(
        history_tokens + size, input_frame_rate
    )
    if first_frame > prompt_frames:
        raise ValueError(
            f"history_tokens = {history_tokens} keeps fewer mel frames than the stream holds "
            f"back ({first_frame} > {prompt_frames}); use a larger history"
        )
    return start - history_tokens, first_frame


def emitted_mel(mel: np.ndarray, chunk: Chunk) -> np.ndarray:
    """The frames of a returned mel whose audio was emitted: all but the held-back cache frame.

    A non-final call vocodes ``mel`` but keeps its last frame's 256 samples for the next call,
    which prepends that frame as its cache; concatenating these over a stream gives a mel with
    exactly samples / 256 frames, aligned with the streamed audio.
    """
    return mel if chunk.finalize else mel[:-MEL_CACHE_LEN]
