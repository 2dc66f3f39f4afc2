r"""The conversation templates of ``glmvoice-chat``: turns -> prompt ids, and how to sample them.

Every id comes from the checkpoint's token layout and every text from its tokenizer; the kind of
template follows from the layout (``ChatTemplate.for_layout``):

``chat`` (a layout with ``<|system|>``, ``<|user|>``, ``<|assistant|>``, e.g. GLM-4-Voice-9B after
glmvoice-import; glm4voice.md §8, the release's web demo)::

    [gMASK]<sop> <|system|>\n{system prompt}
    <|user|>\n {<|begin_of_audio|> speech <|end_of_audio|> | text}
    <|assistant|>streaming_transcription\n {reply: 13 text : 26 speech, interleaved}

  One generation pass in the ``interleave`` modality; it stops at ``<|user|>`` (or
  ``<|endoftext|>`` / ``<|observation|>`` where the layout has them). The next turn appends
  ``<|user|>\n ...`` to the whole history (prompt + reply), as the web demo does.

``base`` (a layout without role tokens: a pre-trained base model such as the tiny ``make demo``
model, never trained on dialogues): the decoupled path of glm4voice.md §8 with the
pre-training templates of data/prompts.py. Pass 1 answers in text: after
``[gMASK]<sop><|begin_of_audio|>{speech}<|end_of_audio|>`` (the ``asr`` prefix) or
``[gMASK]<sop>{text}`` it generates text until ``<|endoftext|>``; pass 2 speaks that text:
``[gMASK]<sop>{answer}<|begin_of_audio|>`` (``tts_prompt``) generates speech until
``<|end_of_audio|>``. A base model has no dialogue state, so each turn stands alone; a base model
trained on ``asr`` documents mostly transcribes the question, so the tiny demo is an echo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from glmvoice_jax.data import prompts
from glmvoice_jax.data import token_layout as token_layout_lib

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_STOPS = ("<|user|>", "<|endoftext|>", "<|observation|>")
ASSISTANT_METADATA = "streaming_transcription\n"  # GLM-4's metadata slot of the assistant header
# glm4voice.md §8: the release's system prompts for speech and text input.
SYSTEM_PROMPTS = {
    "speech": (
        "User will provide you with a speech instruction. Do it step by step. First, think about "
        "the instruction and respond in a interleaved manner, with 13 text token followed by 26 "
        "audio tokens. "
    ),
    "text": (
        "User will provide you with a text instruction. Do it step by step. First, think about "
        "the instruction and respond in a interleaved manner, with 13 text token followed by 26 "
        "audio tokens. "
    ),
}
KINDS = ("auto", "chat", "base")


@dataclasses.dataclass(frozen=True)
class UserTurn:
    """What the user said: speech codes (codebook indices) or text."""

    speech: np.ndarray | None = None
    text: str | None = None

    def __post_init__(self):
        if (self.speech is None) == (self.text is None):
            raise ValueError("a user turn holds either speech codes or text, not both or neither")
        if self.text is not None and not self.text.strip():
            raise ValueError("the user's text is empty")
        if self.speech is not None and np.asarray(self.speech).size == 0:
            raise ValueError("the user's speech has no tokens")

    @property
    def modality(self) -> str:
        return "speech" if self.speech is not None else "text"


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """Builds prompts from a layout and a text encoder (text -> ids without [gMASK]<sop>).

    Attributes:
      kind: "chat" or "base" (module docstring).
      layout: the LM's token layout.
      encode: the LM's text encoder.
    """

    kind: str
    layout: token_layout_lib.TokenLayout
    encode: Callable[[str], Sequence[int]]

    @classmethod
    def for_layout(
        cls,
        layout: token_layout_lib.TokenLayout,
        encode: Callable[[str], Sequence[int]],
        kind: str = "auto",
    ) -> ChatTemplate:
        """The template a layout supports; ``kind="chat"`` on a layout without roles is refused.

        Raises:
          ValueError: unknown kind, or the chat template on a layout without role tokens.
        """
        if kind not in KINDS:
            raise ValueError(f"template must be one of {KINDS}, not {kind!r}")
        names = {t for t, _ in layout.specials}
        has_roles = all(t in names for t in ROLE_TOKENS)
        if kind == "chat" and not has_roles:
            missing = [t for t in ROLE_TOKENS if t not in names]
            raise ValueError(
                f"the chat template needs the role tokens {list(ROLE_TOKENS)}, but token layout "
                f"{layout.name!r} lacks {missing}; use template 'base' (a pre-trained base model)"
            )
        if kind == "auto":
            kind = "chat" if has_roles else "base"
        return cls(kind, layout, encode)

    def _text(self, text: str) -> list[int]:
        return [int(i) for i in self.encode(text)]

    def _user_ids(self, user: UserTurn) -> list[int]:
        if user.speech is not None:
            return self.layout.wrap_audio(user.speech).tolist()
        return self._text(user.text)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The chat template's stops that the layout has."""
        names = dict(self.layout.specials)
        return tuple(names[t] for t in CHAT_STOPS if t in names)

    def chat_prompt(self, history: Sequence[int], user: UserTurn, system: str | None) -> list[int]:
        """The ids of the whole conversation up to the assistant header of this turn.

        Args:
          history: ids of the earlier turns (prompts and replies), empty for the first turn.
          user: this turn's input.
          system: the system prompt (None: the release's prompt for the input's modality);
            only the first turn carries one.
        """
        lay = self.layout
        ids: list[int] = list(history)
        if not ids:
            ids += lay.bos_ids
            text = SYSTEM_PROMPTS[user.modality] if system is None else system
            ids += [lay.special("<|system|>")] + self._text("\n" + text)
        ids += [lay.special("<|user|>")] + self._text("\n") + self._user_ids(user)
        ids += [lay.special("<|assistant|>")] + self._text(ASSISTANT_METADATA)
        return ids

    def answer_prompt(self, user: UserTurn) -> list[int]:
        """Base pass 1: the question, after which the base model writes text."""
        if user.speech is not None:
            return list(self.layout.bos_ids) + self.layout.wrap_audio(user.speech).tolist()
        return list(self.layout.bos_ids) + self._text(user.text)

    def speak_prompt(self, answer_ids: Sequence[int]) -> list[int]:
        """Base pass 2: [gMASK]<sop> {answer} <|begin_of_audio|>."""
        return prompts.tts_prompt(answer_ids, self.layout, what="the text answer").tolist()
