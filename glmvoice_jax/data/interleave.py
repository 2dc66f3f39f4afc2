"""Span selection of interleaved speech-text synthesis (glm4voice.md §7.2, project default §12 #13).

For a text document of n text tokens (GLM-4 text tokens, without [gMASK]<sop> / <|endoftext|>):

1. Span lengths are drawn from Poisson(λ), a zero draw being redrawn, until the spans cover
   η·n tokens. The paper stops at the first draw that *reaches* η·n, which overshoots by about
   λ/2 tokens per document (η measured 0.334 instead of 0.3 at n = 150). The default rule,
   ``stop="nearest"``, keeps that last draw only if it brings the total nearer to η·n than
   stopping before it would: η is then unbiased and the mean span stays λ (simulated: mean
   9.84 / η 0.301 at n = 150, 9.99 / 0.300 at n = 1000). ``stop="reach"`` is the paper's rule.
2. The spans are placed uniformly at random among all placements in which they do not overlap and
   are separated by at least ``min_gap`` text tokens, in a random order: with k spans covering S
   tokens there are n - S - (k - 1)·min_gap free tokens, and choosing the k "gap before span"
   sizes is choosing k sorted positions among free + k (stars and bars). This never fails and
   needs no retries, unlike resampling draws that touch an earlier span; the result is the same
   distribution as rejecting whole placements until one is valid. If the spans cannot fit (tiny
   documents) the last ones are dropped.
3. Each span's text is replaced by speech tokens from the text-to-token model, wrapped in
   <|begin_of_audio|> ... <|end_of_audio|> (``prompts.interleaved`` builds the record).

Everything is a pure function of a ``numpy.random.Generator``, so a job that seeds one generator
per document gets the same spans on every run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from glmvoice_jax.data import prompts, records
from glmvoice_jax.data.token_layout import TokenLayout

STOP_RULES = ("nearest", "reach")


@dataclasses.dataclass(frozen=True)
class SpanConfig:
    """How spans are drawn.

    Attributes:
      mean_len: λ, the Poisson mean of span lengths in text tokens.
      ratio: η, the fraction of each document's text tokens that becomes speech.
      min_gap: text tokens kept between two spans (>= 1 so two spans never merge).
      stop: "nearest" (unbiased η) or "reach" (the paper's wording); see the module docstring.
      min_doc_tokens: documents with fewer text tokens get no spans.
    """

    mean_len: float = 10.0
    ratio: float = 0.3
    min_gap: int = 1
    stop: str = "nearest"
    min_doc_tokens: int = 1

    def __post_init__(self):
        if not self.mean_len > 0:
            raise ValueError(f"SpanConfig.mean_len (λ) must be > 0, got {self.mean_len}")
        if not 0 <= self.ratio < 1:
            raise ValueError(f"SpanConfig.ratio (η) must lie in [0, 1), got {self.ratio}")
        if self.min_gap < 1:
            raise ValueError(f"SpanConfig.min_gap must be >= 1, got {self.min_gap}")
        if self.stop not in STOP_RULES:
            raise ValueError(f"SpanConfig.stop must be one of {STOP_RULES}, got {self.stop!r}")


def draw_lengths(rng: np.random.Generator, n: int, cfg: SpanConfig) -> list[int]:
    """Poisson(λ) span lengths (zero draws redrawn) whose total approaches cfg.ratio * n."""
    target = cfg.ratio * n
    lengths: list[int] = []
    total = 0
    if n < cfg.min_doc_tokens:
        return lengths
    while total < target:
        x = 0
        while x == 0:
            x = int(rng.poisson(cfg.mean_len))
        if cfg.stop == "nearest" and total + x - target > target - total:
            break
        lengths.append(x)
        total += x
    return lengths


def place(
    rng: np.random.Generator, n: int, lengths: Sequence[int], min_gap: int = 1
) -> list[tuple[int, int]]:
    """Random non-overlapping [start, end) spans of the given lengths in n tokens.

    Spans are separated by at least ``min_gap`` tokens and come back sorted by start. Lengths
    that do not fit are dropped from the end of ``lengths``.
    """
    lengths = [int(x) for x in lengths]
    if any(x <= 0 for x in lengths):
        raise ValueError(f"span lengths must be positive, got {lengths}")
    while lengths and sum(lengths) + (len(lengths) - 1) * min_gap > n:
        lengths.pop()
    k = len(lengths)
    if k == 0:
        return []
    order = rng.permutation(k)
    free = n - sum(lengths) - (k - 1) * min_gap
    # k sorted "slots" among free + k positions: gap_i = slot_i - slot_{i-1} - 1 extra tokens.
    slots = np.sort(rng.choice(free + k, size=k, replace=False))
    spans = []
    pos = 0
    prev = -1
    for i, slot in enumerate(slots):
        pos += int(slot - prev - 1)  # extra free tokens before this span
        if i:
            pos += min_gap
        length = lengths[order[i]]
        spans.append((pos, pos + length))
        pos += length
        prev = slot
    return spans


def select_spans(rng: np.random.Generator, n: int, cfg: SpanConfig) -> list[tuple[int, int]]:
    """Draws lengths and places them: the sorted [start, end) spans of one document."""
    return place(rng, n, draw_lengths(rng, n, cfg), cfg.min_gap)


def build_document(
    text_ids: np.ndarray,
    spans: Sequence[tuple[int, int]],
    speech_codes: Sequence[np.ndarray],
    layout: TokenLayout,
    *,
    source: str,
) -> records.Example:
    """The interleaved record: text with spans[i] replaced by speech_codes[i] (wrapped).

    Args:
      text_ids: [n] text ids of the document body (no [gMASK]<sop>, no <|endoftext|>).
      spans: sorted, non-overlapping [start, end) spans, as from ``select_spans``.
      speech_codes: one array of speech codebook indices per span.
      layout: the token layout.
      source: corpus name for the record.

    Returns:
      An ``interleaved`` Example; every token is a target.
    """
    if len(spans) != len(speech_codes):
        raise ValueError(f"{len(spans)} spans but {len(speech_codes)} speech sequences")
    pieces: list[tuple[str, np.ndarray]] = []
    pos = 0
    for (start, end), codes in zip(spans, speech_codes, strict=True):
        if not pos <= start < end <= len(text_ids):
            raise ValueError(
                f"span [{start}, {end}) is out of order or outside the document of "
                f"{len(text_ids)} tokens"
            )
        if start > pos:
            pieces.append(("text", text_ids[pos:start]))
        pieces.append(("speech", codes))
        pos = end
    if pos < len(text_ids):
        pieces.append(("text", text_ids[pos:]))
    return prompts.interleaved(pieces, layout, source=source)
