"""The vocabulary layout: which ids are text, which are special, which are speech.

This module is the only place that knows these numbers (glm4voice.md §5, §6, §12 #10).
Everything else asks a ``TokenLayout``: the loss splits text from speech with ``is_audio``, the
corpus jobs turn codebook indices into LM ids with ``codes_to_ids``, the decoder CLIs go back with
``ids_to_codes``.

Layout of GLM-4-Voice-9B (project default for a fresh vocabulary; on import of a released
checkpoint the ids are read from its tokenizer_config.json):

  0 .. 151328        BPE ranks (text)
  151329 .. 151342   GLM-4 specials (<|endoftext|>, [MASK], [gMASK], ...)
  151343, 151344     <|begin_of_audio|>, <|end_of_audio|>
  152353 .. 168736   <|audio_0|> .. <|audio_16383|>
  168737 .. 168959   padding rows
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

GLM4_SPECIALS: tuple[tuple[str, int], ...] = (
    ("<|endoftext|>", 151329),
    ("[MASK]", 151330),
    ("[gMASK]", 151331),
    ("[sMASK]", 151332),
    ("<sop>", 151333),
    ("<eop>", 151334),
    ("<|system|>", 151335),
    ("<|user|>", 151336),
    ("<|assistant|>", 151337),
    ("<|observation|>", 151338),
    ("<|begin_of_image|>", 151339),
    ("<|end_of_image|>", 151340),
    ("<|begin_of_video|>", 151341),
    ("<|end_of_video|>", 151342),
)
AUDIO_MARKERS: tuple[tuple[str, int], ...] = (
    ("<|begin_of_audio|>", 151343),
    ("<|end_of_audio|>", 151344),
)

BOS = ("[gMASK]", "<sop>")  # every document starts with these (glm4voice.md §12 #15)
EOS = "<|endoftext|>"
BEGIN_AUDIO = "<|begin_of_audio|>"
END_AUDIO = "<|end_of_audio|>"


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Id ranges of one vocabulary.

    Attributes:
      name: preset name, stored with checkpoints.
      text_vocab_size: ids [0, text_vocab_size) are ordinary text tokens.
      specials: (token string, id) pairs of the special tokens.
      audio_offset: id of ``<|audio_0|>``; speech code c has id audio_offset + c.
      num_audio_tokens: codebook size of the speech tokenizer (0 for a text-only vocabulary).
      vocab_size: rows of the embedding / output matrices (padded).
    """

    name: str
    text_vocab_size: int
    specials: tuple[tuple[str, int], ...]
    audio_offset: int
    num_audio_tokens: int
    vocab_size: int

    def __post_init__(self):
        ids = [i for _, i in self.specials]
        if len(set(ids)) != len(ids):
            raise ValueError(f"token layout {self.name!r}: duplicate special ids {sorted(ids)}")
        for tok, i in self.specials:
            if i < self.text_vocab_size or i >= self.vocab_size:
                raise ValueError(
                    f"token layout {self.name!r}: special {tok} = {i} must lie in "
                    f"[{self.text_vocab_size}, {self.vocab_size})"
                )
            if self.num_audio_tokens and self.audio_offset <= i < self.audio_end:
                raise ValueError(f"token layout {self.name!r}: special {tok} = {i} is an audio id")
        if self.num_audio_tokens and (
            self.audio_offset < self.text_vocab_size or self.audio_end > self.vocab_size
        ):
            raise ValueError(
                f"token layout {self.name!r}: audio ids [{self.audio_offset}, {self.audio_end}) "
                f"must lie in [{self.text_vocab_size}, {self.vocab_size})"
            )

    @property
    def audio_end(self) -> int:
        return self.audio_offset + self.num_audio_tokens

    def special(self, token: str) -> int:
        """Id of a special token, e.g. ``layout.special("<|begin_of_audio|>")``."""
        for tok, i in self.specials:
            if tok == token:
                return i
        raise KeyError(
            f"token layout {self.name!r} has no special {token!r}; it has "
            f"{[t for t, _ in self.specials]}"
        )

    @property
    def bos_ids(self) -> list[int]:
        return [self.special(t) for t in BOS]

    @property
    def eos_id(self) -> int:
        return self.special(EOS)

    def is_audio(self, ids):
        """Elementwise: is the id a speech token? Works on numpy and jax arrays."""
        return (ids >= self.audio_offset) & (ids < self.audio_end)

    def codes_to_ids(self, codes) -> np.ndarray:
        """Speech codebook indices (0..num_audio_tokens-1) -> LM ids; range-checked."""
        codes = np.asarray(codes, dtype=np.int64)
        bad = (codes < 0) | (codes >= self.num_audio_tokens)
        if bad.any():
            raise ValueError(
                f"speech code {int(codes[bad][0])} outside the codebook [0, "
                f"{self.num_audio_tokens}) of token layout {self.name!r}"
            )
        return (codes + self.audio_offset).astype(np.int32)

    def ids_to_codes(self, ids) -> np.ndarray:
        """LM ids of speech tokens -> codebook indices; raises on a non-speech id."""
        ids = np.asarray(ids, dtype=np.int64)
        bad = ~self.is_audio(ids)
        if bad.any():
            raise ValueError(
                f"id {int(ids[bad][0])} is not a speech token of layout {self.name!r} "
                f"(speech ids are [{self.audio_offset}, {self.audio_end}))"
            )
        return (ids - self.audio_offset).astype(np.int32)

    def wrap_audio(self, codes) -> np.ndarray:
        """``<|begin_of_audio|>`` + speech ids + ``<|end_of_audio|>``."""
        ids = self.codes_to_ids(codes)
        return np.concatenate([[self.special(BEGIN_AUDIO)], ids, [self.special(END_AUDIO)]]).astype(
            np.int32
        )

    @property
    def text_is_utf8_bytes(self) -> bool:
        """The demo layouts (``demo``, ``demo_chat``, ``demo<K>``): text ids 0..255 are bytes."""
        return self.name in ("demo", "demo_chat") or (
            self.name.startswith("demo") and self.name[4:].isdigit()
        )

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["specials"] = [list(p) for p in self.specials]
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> TokenLayout:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(
                f"unknown TokenLayout fields {sorted(unknown)}; known: {sorted(fields)}"
            )
        d = dict(d)
        d["specials"] = tuple((str(t), int(i)) for t, i in d["specials"])
        return cls(**d)


# The tiny demo vocabulary: UTF-8 bytes as text, a handful of specials, 512 speech codes.
_DEMO_SPECIALS = (
    ("<|endoftext|>", 256),
    ("[gMASK]", 257),
    ("<sop>", 258),
    ("<|begin_of_audio|>", 259),
    ("<|end_of_audio|>", 260),
)

# ``demo`` plus GLM-4's role tokens, for the chat template of stage-2 SFT (glm4voice.md §8) on the
# tiny model: the same ids as ``demo`` everywhere else, so a ``demo`` checkpoint fine-tunes on it.
_DEMO_CHAT_SPECIALS = _DEMO_SPECIALS + (
    ("<|system|>", 261),
    ("<|user|>", 262),
    ("<|assistant|>", 263),
)

LAYOUTS: dict[str, TokenLayout] = {
    "glm4": TokenLayout(
        name="glm4",
        text_vocab_size=151329,
        specials=GLM4_SPECIALS,
        audio_offset=151552,
        num_audio_tokens=0,
        vocab_size=151552,
    ),
    "glm4_voice": TokenLayout(
        name="glm4_voice",
        text_vocab_size=151329,
        specials=GLM4_SPECIALS + AUDIO_MARKERS,
        audio_offset=152353,
        num_audio_tokens=16384,
        vocab_size=168960,
    ),
    "demo": TokenLayout(
        name="demo",
        text_vocab_size=256,
        specials=_DEMO_SPECIALS,
        audio_offset=512,
        num_audio_tokens=512,
        vocab_size=1024,
    ),
    "demo_chat": TokenLayout(
        name="demo_chat",
        text_vocab_size=256,
        specials=_DEMO_CHAT_SPECIALS,
        audio_offset=512,
        num_audio_tokens=512,
        vocab_size=1024,
    ),
}


def demo_layout(num_audio_tokens: int) -> TokenLayout:
    """The demo vocabulary with another codebook size: ``demo<K>`` (bitrate ablations).

    Text bytes and specials as ``demo``; K speech ids from 512; vocab padded to a multiple of 128.
    """
    if num_audio_tokens < 1:
        raise ValueError(f"demo layout needs >= 1 speech token, got {num_audio_tokens}")
    return TokenLayout(
        name=f"demo{num_audio_tokens}",
        text_vocab_size=256,
        specials=_DEMO_SPECIALS,
        audio_offset=512,
        num_audio_tokens=num_audio_tokens,
        vocab_size=-(-(512 + num_audio_tokens) // 128) * 128,
    )


def get(name: str) -> TokenLayout:
    """A preset layout by name; ``demo<K>`` (e.g. ``demo4096``) is the demo layout with K codes."""
    if name in LAYOUTS:
        return LAYOUTS[name]
    if name.startswith("demo") and name[4:].isdigit():
        return demo_layout(int(name[4:]))
    raise ValueError(
        f"unknown token layout {name!r}; known: {sorted(LAYOUTS)} and demo<K> (K speech codes)"
    )
