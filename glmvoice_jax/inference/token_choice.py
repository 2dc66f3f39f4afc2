"""Choosing the next token: modality constraints, stop sets, temperature / top-k / top-p, seeds.

Pure functions of one decode step over a batch of rows, used inside the engine's compiled loop
(engine.py). Each row carries its own settings as arrays, so one compiled step serves a batch of
requests that differ in temperature, filters, stops, modality and seed.

Token classes come from the checkpoint's token layout (data/token_layout.py), never from
constants: text ids [0, text_vocab_size), speech ids [audio_offset, audio_end), the layout's
specials; other rows of the (padded) vocabulary are never chosen.

Modalities (``MODALITIES``, one code per row):

* ``free``: any text, speech or special id.
* ``text``: text ids only (plus the row's stop ids).
* ``speech``: speech ids only (plus the row's stop ids).
* ``interleave``: the GLM-4-Voice chat pattern (glm4voice.md §8): blocks of ``text_block`` text
  tokens and ``speech_block`` speech tokens (13 : 26). In a text slot the row may choose a text
  or a speech id; a speech id there means the text has ended, and from then on every content
  token is speech. Speech slots take speech ids only.

Stop ids are allowed in every modality once ``min_new`` tokens were generated; a row's stop set
is padded with -1 (never an id).

Sampling, as transformers applies it: logits of disallowed ids are -inf; temperature 0 is greedy
(argmax); otherwise logits / temperature, then top-k (0 = off), then top-p over what top-k kept
(1.0 = off; the best id is always kept), then a categorical draw with the key
``fold_in(key(seed), n)`` for the row's n-th generated token: a row's tokens depend on its seed,
prompt and settings only, never on its batch, its position in it, or the device count.

Axes: B rows, V vocabulary, S stop ids per row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from glmvoice_jax.data import token_layout as token_layout_lib

MODALITIES = ("free", "text", "speech", "interleave")
FREE, TEXT, SPEECH, INTERLEAVE = range(len(MODALITIES))


@dataclasses.dataclass(frozen=True)
class TokenClasses:
    """Boolean masks [V] over the model's vocabulary: which ids are text, speech, special."""

    text: np.ndarray
    speech: np.ndarray
    special: np.ndarray

    @classmethod
    def of(cls, layout: token_layout_lib.TokenLayout, vocab_size: int) -> TokenClasses:
        """The classes of a layout, over a model vocabulary of ``vocab_size`` rows.

        Raises:
          ValueError: the layout needs more ids than the model has.
        """
        if layout.vocab_size > vocab_size:
            raise ValueError(
                f"token layout {layout.name!r} has {layout.vocab_size} ids but the model's "
                f"vocabulary has {vocab_size} rows; the checkpoint and its layout do not match"
            )
        ids = np.arange(vocab_size)
        special = np.zeros(vocab_size, bool)
        special[[i for _, i in layout.specials]] = True
        speech = np.asarray(layout.is_audio(ids)) if layout.num_audio_tokens else ids < 0
        return cls(text=ids < layout.text_vocab_size, speech=speech, special=special)


@dataclasses.dataclass(frozen=True)
class RowState:
    """What the constraints need to know of each row's generation so far.

    Attributes:
      generated: [B] int32, tokens generated so far (the stop not counted: it ends the row).
      text_done: [B] bool, an interleaved row chose speech in a text slot.
    """

    generated: jax.Array
    text_done: jax.Array


jax.tree_util.register_dataclass(RowState, data_fields=["generated", "text_done"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class RowSettings:
    """Per-row settings of a batch, as device arrays (engine.py builds them from requests).

    Attributes:
      modality: [B] int32 code of ``MODALITIES``.
      text_block: [B] int32 text tokens per interleave block.
      speech_block: [B] int32 speech tokens per interleave block.
      stop_ids: [B, S] int32, -1 padded.
      min_new: [B] int32, stops are masked until this many tokens were generated.
      temperature: [B] float32, 0 = greedy.
      top_k: [B] int32, 0 = off.
      top_p: [B] float32, 1 = off.
      seed: [B] uint32.
    """

    modality: jax.Array
    text_block: jax.Array
    speech_block: jax.Array
    stop_ids: jax.Array
    min_new: jax.Array
    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    seed: jax.Array


jax.tree_util.register_dataclass(
    RowSettings,
    data_fields=[f.name for f in dataclasses.fields(RowSettings)],
    meta_fields=[],
)


def _in_text_slot(rows: RowSettings, state: RowState) -> jax.Array:
    """[B] bool: an interleaved row whose next token falls in a text slot of its block."""
    cycle = rows.text_block + rows.speech_block
    return ~state.text_done & (state.generated % cycle < rows.text_block)


def allowed(classes: TokenClasses, rows: RowSettings, state: RowState) -> jax.Array:
    """[B, V] bool: the ids each row may choose next."""
    text, speech = jnp.asarray(classes.text)[None], jnp.asarray(classes.speech)[None]
    special = jnp.asarray(classes.special)[None]
    mode = rows.modality[:, None]
    text_slot = _in_text_slot(rows, state)[:, None]
    content = jnp.select(
        [mode == FREE, mode == TEXT, mode == SPEECH],
        [text | speech | special, text, speech],
        speech | (text & text_slot),  # interleave
    )
    b, v = content.shape
    stops = jnp.where(rows.stop_ids >= 0, rows.stop_ids, v)  # -1 padding -> out of range
    is_stop = jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], stops].set(True, mode="drop")
    may_stop = (state.generated >= rows.min_new)[:, None]
    return (content & ~is_stop) | (is_stop & may_stop)


def advance(classes: TokenClasses, rows: RowSettings, state: RowState, token: jax.Array):
    """The state after each row generated ``token`` [B] (a content token, not a stop)."""
    speech_now = jnp.asarray(classes.speech)[token]
    ends_text = (rows.modality == INTERLEAVE) & _in_text_slot(rows, state) & speech_now
    return RowState(state.generated + 1, state.text_done | ends_text)


def _filter(scaled: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Masks [B, V] logits outside each row's top-k, then outside its top-p nucleus."""
    v = scaled.shape[-1]
    ranked = -jnp.sort(-scaled, axis=-1)  # (B, V) descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)[:, None]  # (B, 1)
    in_k = jnp.arange(v)[None] < k
    probs = jax.nn.softmax(jnp.where(in_k, ranked, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better ids
    keep = in_k & (before < top_p[:, None])
    threshold = jnp.min(jnp.where(keep, ranked, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def choose(
    logits: jax.Array,
    allowed_ids: jax.Array,
    rows: RowSettings,
    state: RowState,
    *,
    use_filters: bool,
) -> jax.Array:
    """[B] int32 next tokens from float32 logits [B, V].

    Args:
      logits: the model's next-token logits.
      allowed_ids: ``allowed(...)``.
      rows: per-row settings.
      state: per-row progress (its ``generated`` picks the step's key).
      use_filters: apply top-k / top-p (False skips the sort when no row filters).
    """
    logits = jnp.where(allowed_ids, logits.astype(jnp.float32), -jnp.inf)
    greedy = jnp.argmax(logits, axis=-1)
    temperature = jnp.where(rows.temperature > 0, rows.temperature, 1.0)
    scaled = logits / temperature[:, None]
    if use_filters:
        scaled = _filter(scaled, rows.top_k, rows.top_p)
    keys = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.key(s), n))(
        rows.seed, state.generated
    )
    drawn = jax.vmap(jax.random.categorical)(keys, scaled)
    return jnp.where(rows.temperature > 0, drawn, greedy).astype(jnp.int32)


def is_stop(rows: RowSettings, token: jax.Array) -> jax.Array:
    """[B] bool: the token is in its row's stop set."""
    return jnp.any(token[:, None] == rows.stop_ids, axis=-1)
