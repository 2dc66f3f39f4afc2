"""Chunked (streaming) decoding as GLM-4-Voice's ``AudioDecoder.token2wav`` + web_demo driver.

Ref: decoder.md §12 (token2wav state machine, drivers, the §12.3 duplicated-frame quirk);
GLM-4-Voice @ eb00ce9 ``flow_inference.py`` (``AudioDecoder.token2wav``, ``fade_in_out``) and
``web_demo.py`` (block sizes 25, 50, 100, 150, 200, 200, ...).

Every chunk re-runs the flow on the whole history (prompt tokens + their returned mels as
``cond``), cross-fades the first 34 new frames with the held-back overlap (a symmetric Hamming
window on log-mel values), prepends the 1-frame HiFT cache and overwrites the first 256 source
samples with the cached source. The state machine runs on the host in numpy; flow and HiFT are
jitted per shape. Deterministic mode (§14: z = 0, no NSF noise, zero phases) unless a PRNG key is
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
from glmvoice_jax.models.speech_decoder.speech_decoder import SpeechDecoder, check_tokens

MEL_OVERLAP_LEN = 34  # int(5 / 12.5 * 22050 / 256): 5 tokens of mel
MEL_CACHE_LEN = 1
SOURCE_CACHE_LEN = 256
WEB_DEMO_BLOCK_SIZES = (25, 50, 100, 150, 200)  # the last size repeats


@nnx.jit(static_argnames="matmul_dtype")
def _flow(
    model: SpeechDecoder,
    tokens: jax.Array,
    prompt_tokens: jax.Array | None,
    prompt_feat: jax.Array | None,
    noise: jax.Array | None,
    matmul_dtype: str | None = None,
) -> jax.Array:
    mel = model.flow.inference(
        tokens, prompt_tokens, prompt_feat, noise=noise, matmul_dtype=matmul_dtype
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
      on_chunk: called after every call as on_chunk(speech, mel, chunk) with the samples just
        emitted (L,), the returned mel (T, M) and the call's ``Chunk``; the emitted samples are
        the audio of ``emitted_mel(mel, chunk)``.

    Returns:
      (the concatenated emitted waveform, one ``Chunk`` per call).

    Raises:
      ValueError: empty tokens, an id outside the codebook, or a non-positive block size.
    """
    ids = check_tokens(tokens, model.config.flow.vocab_size)
    if not block_sizes or min(block_sizes) <= 0:
        raise ValueError(f"block_sizes must be positive, got {tuple(block_sizes)}")
    sizes = itertools.chain(block_sizes, itertools.repeat(block_sizes[-1]))
    state = token2wav or Token2Wav(model, key=key, matmul_dtype=matmul_dtype)
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
        wav, mel = state(ids[start : start + size], ids[:start], prompt_feat, finalize)
        chunks.append(
            Chunk(size, start, prompt_feat.shape[0], mel.shape[0], wav.shape[0], finalize)
        )
        duplicate = not parity and len(chunks) > 1
        feats.append(mel[MEL_CACHE_LEN:] if duplicate else mel)
        speech.append(wav)
        if on_chunk is not None:
            on_chunk(wav, mel, chunks[-1])
        start += size
    return np.concatenate(speech), chunks


def emitted_mel(mel: np.ndarray, chunk: Chunk) -> np.ndarray:
    """The frames of a returned mel whose audio was emitted: all but the held-back cache frame.

    A non-final call vocodes ``mel`` but keeps its last frame's 256 samples for the next call,
    which prepends that frame as its cache; concatenating these over a stream gives a mel with
    exactly samples / 256 frames, aligned with the streamed audio.
    """
    return mel if chunk.finalize else mel[:-MEL_CACHE_LEN]
