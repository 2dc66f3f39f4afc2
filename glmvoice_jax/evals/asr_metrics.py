"""ASR scoring: text normalisation and word / character error rates (Levenshtein distance).

WER = word edits / reference words, CER = character edits / reference characters, both summed
over a set of utterances (corpus level, as usually reported), after ``normalize_text`` on the
reference and the hypothesis.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def normalize_text(text: str) -> str:
    """Lower case; letters, digits and apostrophes kept; everything else is a space; runs collapse.

    Used for scoring, and for training transcripts when ``text.normalize`` is set.
    """
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower())
    return " ".join(text.split())


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus-level {"wer", "cer"} of hypotheses against references (both normalised here).

    Raises:
      ValueError: when the lists differ in length or the references are empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    word_err = word_total = char_err = char_total = 0
    for ref, hyp in zip(refs, hyps):
        ref, hyp = normalize_text(ref), normalize_text(hyp)
        word_err += edit_distance(ref.split(), hyp.split())
        word_total += len(ref.split())
        char_err += edit_distance(ref, hyp)
        char_total += len(ref)
    if not char_total:
        raise ValueError("error rates need at least one non-empty reference")
    return {"wer": word_err / max(word_total, 1), "cer": char_err / char_total}
