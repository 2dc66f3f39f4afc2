"""ASR scoring: text normalisation and word / character error rates (through jiwer).

WER = word edits / reference words, CER = character edits / reference characters (spaces
count as characters), both summed over a set of utterances (corpus level, as usually reported),
after ``normalize_text`` on the reference and the hypothesis. The alignments are jiwer's
(``process_words`` / ``process_characters``, Levenshtein with unit costs); an utterance whose
reference normalises to nothing adds its hypothesis as insertions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jiwer


def normalize_text(text: str) -> str:
    """Lower case; letters, digits and apostrophes kept; everything else is a space; runs collapse.

    Used for scoring, and for training transcripts when ``text.normalize`` is set.
    """
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower())
    return " ".join(text.split())


def _edits(out) -> int:
    return out.substitutions + out.deletions + out.insertions


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus-level {"wer", "cer"} of hypotheses against references (both normalised here).

    Raises:
      ValueError: when the lists differ in length or the references are empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    char_total = sum(len(r) for r in refs)
    if not char_total:
        raise ValueError("error rates need at least one non-empty reference")
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    word_total = sum(len(r.split()) for r in refs)
    return {"wer": _edits(words) / word_total, "cer": _edits(chars) / char_total}
