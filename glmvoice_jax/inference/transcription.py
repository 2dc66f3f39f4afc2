"""The ASR head of a speech-tokenizer checkpoint, applied to speech tokens instead of audio.

GLM-4-Voice's tokenizer is trained as a whole ASR model (glm4voice.md §2.7): the encoder layers
after the VQ and the Whisper decoder read the quantized frames. Feeding them code vectors looked
up from token ids (``WhisperVQEncoder.from_codes``) transcribes tokens that never came from audio:
an LM's TTS output, or a text-to-token model's spans. The CER of those transcripts against the
input text is the project's intelligibility check for generated speech tokens when no speech
decoder exists for the tokenizer (the bitrate ablation, the demo's text-to-token report).

Greedy decoding with the KV cache of ``whisper_asr.greedy_decode``, batched by length.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from flax import nnx

from glmvoice_jax.convert.whisper import hf_whisper as convert_whisper
from glmvoice_jax.data import text_tokenizer as text_tokenizer_lib
from glmvoice_jax.inference import speech_tokenization
from glmvoice_jax.models import whisper_asr

_TOKENIZER_META = os.path.join("tokenizer", "meta.json")


def find_text_tokenizer(path: str) -> str:
    """The ``tokenizer`` folder the trainer saved next to ``path``'s checkpoints.

    ``path`` may be the training workdir, its ``checkpoints`` folder or one step folder.

    Raises:
      FileNotFoundError: naming the places looked at.
    """
    path = os.path.abspath(path)
    candidates = [
        os.path.join(path, "checkpoints"),
        path,
        os.path.dirname(path),
    ]
    for c in candidates:
        if os.path.exists(os.path.join(c, _TOKENIZER_META)):
            return os.path.join(c, "tokenizer")
    raise FileNotFoundError(
        f"no ASR text tokenizer ({_TOKENIZER_META}) under {candidates}; transcribing tokens "
        "needs a checkpoint written by the speech-tokenizer trainer (glmvoice-train with a "
        "tokenizer config)"
    )


def _prefix_and_eos(tok: text_tokenizer_lib.TextTokenizer) -> tuple[tuple[int, ...], int]:
    """Decoder prefix and end id, as the trainer's ``AsrText`` defines them."""
    if isinstance(tok, text_tokenizer_lib.SentencePieceTokenizer):
        eos = int(spm.SentencePieceProcessor(model_proto=tok.model_proto).eos_id())
        return tuple(tok.prefix_ids), eos
    return tuple(tok.specials[t] for t in tok.prefix), tok.specials[convert_whisper.WHISPER_EOS]


class TokenTranscriber:
    """Transcribes speech-token sequences with a tokenizer checkpoint's encoder tail + decoder.

    Args:
      path: a speech-tokenizer training workdir (or its checkpoints / a step folder).
      max_new_tokens: decoder tokens per transcript (default: all positions after the prefix).
      batch_size: sequences per decoding batch.
    """

    def __init__(self, path: str, *, max_new_tokens: int | None = None, batch_size: int = 16):
        self.cfg, model = speech_tokenization.load_model(path)
        if model.decoder is None:
            raise ValueError(f"checkpoint {path} has no ASR decoder (num_decoder_layers=0)")
        tok_dir = find_text_tokenizer(path)
        with open(os.path.join(tok_dir, "meta.json")) as f:
            self.tokenizer = text_tokenizer_lib.from_meta(json.load(f), tok_dir)
        self.prefix, self.eos_id = _prefix_and_eos(self.tokenizer)
        limit = self.cfg.max_target_positions - len(self.prefix)
        self.max_new_tokens = min(max_new_tokens or limit, limit)
        self.batch_size = batch_size
        self._graphdef, self._state = nnx.split(model)
        self._fn = jax.jit(self._decode)

    def _decode(self, state, ids, mask):
        model = nnx.merge(self._graphdef, state)
        enc = model.encoder.from_codes(ids, mask)
        return whisper_asr.greedy_decode(
            model.decoder,
            enc.hidden,
            enc.mask,
            self.prefix,
            max_new_tokens=self.max_new_tokens,
            eos_id=self.eos_id,
        )

    def transcribe(self, codes: Sequence[np.ndarray]) -> list[str]:
        """One transcript per code sequence (an empty sequence gives "")."""
        out = [""] * len(codes)
        limit = self.cfg.max_source_positions // max(1, self.cfg.pooling_kernel)
        order = [i for i in sorted(range(len(codes)), key=lambda i: len(codes[i])) if len(codes[i])]
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            width = min(limit, -(-max(len(codes[i]) for i in chunk) // 16) * 16)
            ids = np.zeros((self.batch_size, width), np.int32)
            mask = np.zeros((self.batch_size, width), bool)
            for r, i in enumerate(chunk):
                c = np.asarray(codes[i], np.int64)[:width]
                if c.min() < 0 or c.max() >= self.cfg.codebook_size:
                    raise ValueError(
                        f"sequence {i}: code {int(c.max())} outside the codebook "
                        f"[0, {self.cfg.codebook_size})"
                    )
                ids[r, : len(c)], mask[r, : len(c)] = c, True
            mask[len(chunk) :, 0] = True  # padding rows: one dummy token
            toks, lens = self._fn(self._state, jnp.asarray(ids), jnp.asarray(mask))
            toks, lens = np.asarray(toks), np.asarray(lens)
            for r, i in enumerate(chunk):
                out[i] = self.tokenizer.decode([int(t) for t in toks[r, : lens[r]]])
        return out
