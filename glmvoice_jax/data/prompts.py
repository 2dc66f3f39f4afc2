"""The document templates of pre-training: the one place that decides token order and loss masks.

Project defaults of glm4voice.md §12 #14 and #15 (the paper publishes none of them, §7.3):

  kind         tokens                                                          loss on
  text         [gMASK]<sop> {text} <|endoftext|>                               everything
  speech       [gMASK]<sop> <|begin_of_audio|> {speech} <|end_of_audio|>       everything
  asr          [gMASK]<sop> <|begin_of_audio|> {speech} <|end_of_audio|>
               {text} <|endoftext|>                                            {text}<|endoftext|>
  tts          [gMASK]<sop> {text} <|begin_of_audio|> {speech} <|end_of_audio|>
                                                                               {speech}<|end_of_audio|>
  interleaved  [gMASK]<sop> {text | <|begin_of_audio|> {speech} <|end_of_audio|>}* <|endoftext|>
                                                                               everything

Stage-2 SFT replies (glm4voice.md §8) are "streaming thoughts": ``streaming_reply`` below owns
their token order (the 13 : 26 alignment rule); the dialogue records around them follow the chat
template of inference/chat_template.py (corpora/dialogue_records.py builds them).

The text-to-token model (glm4voice.md §12 #12) is trained on the ``tts`` template and sampled from
its prefix ``tts_prompt``: [gMASK]<sop> {text} <|begin_of_audio|>. Evaluation of the base model
(glm4voice.md §9.3) uses the same ASR / TTS templates.

``{text}`` are text-token ids *without* the tokenizer's [gMASK]<sop> prefix
(``tokenizer.encode(text, add_prefix=False)``); ``{speech}`` are speech codebook indices
0..num_audio_tokens-1, turned into LM ids by the token layout (glm4voice.md §6). Every id comes
from ``token_layout``; nothing here hard-codes one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glmvoice_jax.data import records
from glmvoice_jax.data.token_layout import BEGIN_AUDIO, TokenLayout


def _text_ids(text_ids: Sequence[int] | np.ndarray, layout: TokenLayout, what: str) -> np.ndarray:
    ids = np.asarray(text_ids, dtype=np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError(f"{what}: the text has no tokens")
    bad = (ids < 0) | (ids >= layout.text_vocab_size)
    if bad.any():
        raise ValueError(
            f"{what}: text id {int(ids[bad][0])} is outside the text ids [0, "
            f"{layout.text_vocab_size}) of token layout {layout.name!r}; encode the text without "
            "the [gMASK]<sop> prefix, with the tokenizer that belongs to the layout"
        )
    return ids.astype(np.int32)


def _codes(codes: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    codes = np.asarray(codes).reshape(-1)
    if codes.size == 0:
        raise ValueError(f"{what}: the utterance has no speech tokens")
    return codes


def _example(parts: list[tuple[np.ndarray, int]], source: str, kind: str) -> records.Example:
    """Concatenates (ids, loss flag) parts into one record."""
    tokens = np.concatenate([np.asarray(p, np.int32) for p, _ in parts])
    mask = np.concatenate([np.full(len(p), flag, np.uint8) for p, flag in parts])
    return records.Example(tokens=tokens, loss_mask=mask, source=source, kind=kind)


def text(text_ids, layout: TokenLayout, *, source: str) -> records.Example:
    """A text-only document; every token is a target."""
    ids = _text_ids(text_ids, layout, f"text document of {source!r}")
    return _example([(layout.bos_ids, 1), (ids, 1), ([layout.eos_id], 1)], source, "text")


def speech(codes, layout: TokenLayout, *, source: str) -> records.Example:
    """A speech-only document; every token is a target."""
    audio = layout.wrap_audio(_codes(codes, f"speech document of {source!r}"))
    return _example([(layout.bos_ids, 1), (audio, 1)], source, "speech")


def asr(codes, text_ids, layout: TokenLayout, *, source: str) -> records.Example:
    """Speech -> transcript; the loss covers the transcript and <|endoftext|> only."""
    audio = layout.wrap_audio(_codes(codes, f"ASR sample of {source!r}"))
    ids = _text_ids(text_ids, layout, f"ASR transcript of {source!r}")
    return _example(
        [(layout.bos_ids, 0), (audio, 0), (ids, 1), ([layout.eos_id], 1)], source, "asr"
    )


def tts(text_ids, codes, layout: TokenLayout, *, source: str) -> records.Example:
    """Text -> speech; the loss covers the speech tokens and <|end_of_audio|> only."""
    prompt = tts_prompt(text_ids, layout, what=f"TTS text of {source!r}")
    audio = layout.wrap_audio(_codes(codes, f"TTS sample of {source!r}"))
    # wrap_audio starts with <|begin_of_audio|>, which tts_prompt already ends with.
    return _example([(prompt, 0), (audio[1:], 1)], source, "tts")


def tts_prompt(text_ids, layout: TokenLayout, *, what: str = "TTS prompt") -> np.ndarray:
    """[gMASK]<sop> {text} <|begin_of_audio|>: what the text-to-token model continues."""
    ids = _text_ids(text_ids, layout, what)
    return np.concatenate([layout.bos_ids, ids, [layout.special(BEGIN_AUDIO)]]).astype(np.int32)


def interleaved(
    pieces: Sequence[tuple[str, np.ndarray]], layout: TokenLayout, *, source: str
) -> records.Example:
    """An interleaved document from ("text", text ids) and ("speech", codes) pieces, in order.

    Every token is a target (glm4voice.md §7.3). Each speech piece is wrapped in
    <|begin_of_audio|> ... <|end_of_audio|> (glm4voice.md §12 #13).
    """
    parts: list[tuple[np.ndarray, int]] = [(np.asarray(layout.bos_ids), 1)]
    for i, (kind, ids) in enumerate(pieces):
        what = f"piece {i} of an interleaved document of {source!r}"
        if kind == "text":
            parts.append((_text_ids(ids, layout, what), 1))
        elif kind == "speech":
            parts.append((layout.wrap_audio(_codes(ids, what)), 1))
        else:
            raise ValueError(f"{what}: kind {kind!r} must be 'text' or 'speech'")
    parts.append((np.asarray([layout.eos_id]), 1))
    return _example(parts, source, "interleaved")


STREAM_BLOCKS = (13, 26)  # text tokens : speech tokens per block of a streaming reply (§8)


def streaming_reply(
    text_ids, codes, layout: TokenLayout, *, blocks: tuple[int, int] = STREAM_BLOCKS, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """An assistant reply in the "streaming thoughts" order: (ids [L] int32, is_speech [L] bool).

    The alignment rule (the one place it is written down): blocks alternate, text first, with
    ``blocks = (n_t, n_s)`` = (13, 26):

        text[0:13] speech[0:26] text[13:26] speech[26:52] ...

    * the text runs out first (the normal case, 1 : 2 keeps text ahead of speech): the last text
      block may be short, and all the remaining speech follows back to back (the release's
      web_demo.py; the engine's ``interleave`` modality, inference/token_choice.py, generates
      exactly this: a speech id in a text slot ends the text);
    * the speech runs out first: the remaining text follows back to back. The engine's
      ``interleave`` modality cannot generate that (speech slots take speech only), so the
      dialogue job counts such replies (``text_outlasts_speech`` in its stats).

    Speech ids are bare inside a reply (no <|begin_of_audio|> / <|end_of_audio|>), as the
    release's chat model emits them. Text ids are without [gMASK]<sop>.

    Raises:
      ValueError: empty text or speech, ids outside the layout's ranges, bad block sizes.
    """
    n_t, n_s = blocks
    if n_t < 1 or n_s < 1:
        raise ValueError(f"{what}: blocks must be two positive sizes, got {blocks}")
    text = _text_ids(text_ids, layout, what)
    speech = layout.codes_to_ids(_codes(codes, what))
    ids: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    t = s = 0
    while t < len(text) or s < len(speech):
        if t < len(text):
            part = text[t : t + n_t if s < len(speech) else len(text)]
            ids.append(part)
            flags.append(np.zeros(len(part), bool))
            t += len(part)
        if s < len(speech):
            part = speech[s : s + n_s if t < len(text) else len(speech)]
            ids.append(part)
            flags.append(np.ones(len(part), bool))
            s += len(part)
    return np.concatenate(ids).astype(np.int32), np.concatenate(flags)
