"""Speech tokens as they are generated -> audio chunks, decoded on a worker thread.

The chat tool hands each new speech code to ``SpeechStream.push`` while the LM keeps generating;
a worker thread runs the decoder's ``token2wav`` state machine (models/speech_decoder/stream.py)
on blocks of ``block_sizes`` codes: first 10 (0.8 s of speech, the paper's first-chunk budget,
glm4voice.md §8), then the web demo's growing sizes 25, 50, 100, 150, 200 (the last repeats).
Every call re-runs the flow on the whole history (earlier codes + their mels as the prompt), as
the reference does, and the emitted samples go to ``on_audio`` at once.

A block is decoded only when more codes than its size are waiting, so ``finish`` always has codes
left for the final call (finalize=True), which emits the held-back overlap: nothing is lost when
the speech ends on a block boundary (the reference's web demo loses it, decoder.md §12.2).

JAX releases the GIL while it computes, so decoding overlaps generation on a multi-core host.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from glmvoice_jax.models.speech_decoder.speech_decoder import SpeechDecoder, check_tokens
from glmvoice_jax.models.speech_decoder.stream import Token2Wav

CHAT_BLOCK_SIZES = (10, 25, 50, 100, 150, 200)
_DONE = object()


class SpeechStream:
    """Feeds codes to the decoder in growing blocks on a worker thread.

    Args:
      model: the speech decoder.
      on_audio: called on the worker thread as on_audio(samples) for every emitted chunk
        (float32, at ``model.config.hift.sampling_rate``).
      block_sizes: codes per decoder call; the last repeats.
      key: PRNG key of the flow / vocoder noise; None: the deterministic mode (decoder.md §14).
    """

    def __init__(
        self,
        model: SpeechDecoder,
        on_audio: Callable[[np.ndarray], None],
        block_sizes: Sequence[int] = CHAT_BLOCK_SIZES,
        *,
        key: jax.Array | None = None,
    ):
        if not block_sizes or min(block_sizes) < 1:
            raise ValueError(f"block_sizes must be positive, got {tuple(block_sizes)}")
        self.model = model
        # Read here, once: the worker's nnx.jit calls update the module in place, so its
        # attributes may be briefly absent to another thread (push runs on the caller's).
        self._vocab_size = model.config.flow.vocab_size
        self._n_mels = model.config.flow.output_size
        self.on_audio = on_audio
        self._sizes = itertools.chain(block_sizes, itertools.repeat(block_sizes[-1]))
        self._size = next(self._sizes)
        self._state = Token2Wav(model, key=key)
        self._pending: list[int] = []
        self._codes: list[int] = []  # codes already decoded (the flow's prompt)
        self._feats: list[np.ndarray] = []
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self.chunks: list[tuple[int, float]] = []  # (codes, seconds spent) per decoder call
        self.samples = 0
        self._worker = threading.Thread(target=self._run, name="speech-stream", daemon=True)
        self._worker.start()

    def push(self, codes: Sequence[int] | np.ndarray) -> None:
        """Queues new speech codes (codebook indices)."""
        codes = check_tokens(np.asarray(codes, np.int64), self._vocab_size)
        self._queue.put(codes)

    def finish(self) -> None:
        """Decodes what is left (finalize) and waits for the worker; re-raises its error."""
        self._queue.put(_DONE)
        self._worker.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    if self._pending:
                        self._call(self._pending, finalize=True)
                    return
                self._pending.extend(int(c) for c in item)
                while len(self._pending) > self._size:
                    block, self._pending = self._pending[: self._size], self._pending[self._size :]
                    self._call(block, finalize=False)
                    self._size = next(self._sizes)
        except BaseException as e:  # noqa: BLE001 - handed to the caller by finish()
            self._error = e

    def _call(self, block: list[int], finalize: bool) -> None:
        start = time.perf_counter()
        n_mels = self._n_mels
        feats = np.concatenate(self._feats) if self._feats else np.zeros((0, n_mels), np.float32)
        speech, mel = self._state(
            np.asarray(block, np.int32), np.asarray(self._codes, np.int32), feats, finalize
        )
        self._feats.append(mel)
        self._codes.extend(block)
        self.samples += int(speech.size)
        self.chunks.append((len(block), time.perf_counter() - start))
        if not np.isfinite(speech).all():
            raise FloatingPointError("the speech decoder produced non-finite audio")
        self.on_audio(speech)
