"""Speech-vocabulary extension of an imported text LM (glm4voice.md §6, §12 #10 and #11).

``glmvoice-import --add_speech_tokens N`` appends ``<|begin_of_audio|>``, ``<|end_of_audio|>`` and
``<|audio_0|>`` .. ``<|audio_{N-1}|>`` to the vocabulary:

* GLM-4-9B (token layout "glm4", 151552 rows) with N = 16384 becomes exactly the GLM-4-Voice
  layout "glm4_voice": the two markers take the first free special slots (151343, 151344),
  ``<|audio_0|>`` = 152353, and the matrices grow to 168960 rows (token_layout.py).
* Any other vocabulary: the markers take the next two ids after the highest text/special id,
  the audio ids start at max(old rows, marker end), and the row count is rounded up to a multiple
  of 128.

Initialisation of the new rows (project default, glm4voice.md §12 #11). "New rows" are every row
at or above the old row count plus the marker rows (in GLM-4-9B those are untrained padding
slots). For the input embedding and, separately, for the output head (its [V, D] rows):

    new_row = mean + 0.1 * std * z,   z ~ N(0, 1) per element,

where mean and std are the per-dimension mean and standard deviation over *all* old rows of that
matrix (population std, computed in float64), and z is drawn from
``numpy.random.default_rng([seed, 0])`` for the embedding and ``[seed, 1]`` for the head, one row
after another in ascending id order. The values are therefore independent of how the import is
blocked, and the same seed always gives the same checkpoint.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from glmvoice_jax.data import token_layout as token_layout_lib

NOISE_SCALE = 0.1
ROW_MULTIPLE = 128


def extended_layout(
    src: token_layout_lib.TokenLayout, num_audio: int
) -> token_layout_lib.TokenLayout:
    """The layout after appending the two audio markers and ``num_audio`` speech tokens.

    Raises:
      ValueError: num_audio <= 0, or the source already has speech tokens.
    """
    if num_audio <= 0:
        raise ValueError(f"--add_speech_tokens must be positive, got {num_audio}")
    if src.num_audio_tokens:
        raise ValueError(
            f"token layout {src.name!r} already has {src.num_audio_tokens} speech tokens; "
            "import without --add_speech_tokens"
        )
    if src.name == "glm4" and num_audio == token_layout_lib.LAYOUTS["glm4_voice"].num_audio_tokens:
        return token_layout_lib.LAYOUTS["glm4_voice"]
    used = [src.text_vocab_size - 1] + [i for _, i in src.specials]
    begin = max(used) + 1
    markers = (
        (token_layout_lib.BEGIN_AUDIO, begin),
        (token_layout_lib.END_AUDIO, begin + 1),
    )
    audio_offset = max(src.vocab_size, begin + 2)
    vocab = -(-(audio_offset + num_audio) // ROW_MULTIPLE) * ROW_MULTIPLE
    return dataclasses.replace(
        src,
        name=f"{src.name}+speech{num_audio}",
        specials=tuple(src.specials) + markers,
        audio_offset=audio_offset,
        num_audio_tokens=num_audio,
        vocab_size=vocab,
    )


def new_row_ids(
    src: token_layout_lib.TokenLayout, dst: token_layout_lib.TokenLayout
) -> tuple[list[int], tuple[int, int]]:
    """(marker rows inside the old matrix, [old rows, new rows) range), both to initialise."""
    inside = sorted(
        i
        for tok, i in dst.specials
        if i < src.vocab_size and tok in (token_layout_lib.BEGIN_AUDIO, token_layout_lib.END_AUDIO)
    )
    return inside, (src.vocab_size, dst.vocab_size)


class RowStats:
    """Per-dimension mean and population std over rows seen in blocks (Chan's parallel update)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)

    def update(self, rows: np.ndarray) -> None:
        x = np.asarray(rows, np.float64)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(axis=0)
        m2b = ((x - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n, 1))


class RowInit:
    """Draws new rows ``mean + 0.1 * std * z`` in ascending id order from one seeded stream."""

    def __init__(self, stats: RowStats, seed: int, stream: int):
        self.mean = stats.mean
        self.scale = NOISE_SCALE * stats.std
        self.rng = np.random.default_rng([seed, stream])

    def next_rows(self, n: int) -> np.ndarray:
        z = self.rng.standard_normal((n, self.mean.shape[0]))
        return self.mean + self.scale * z  # (n, D) float64
