"""asr_metrics: corpus-level WER / CER after normalisation, computed by jiwer."""

import pytest

from glmvoice_jax.evals import asr_metrics


def test_normalize_text_keeps_letters_digits_and_apostrophes():
    assert asr_metrics.normalize_text("  It's 9 O'Clock,  Sir! ") == "it's 9 o'clock sir"


def test_error_rates_are_summed_over_the_corpus():
    out = asr_metrics.error_rates(["The cat sat.", "a dog"], ["the bat sat", "a"])
    assert out["wer"] == pytest.approx(2 / 5)  # one substitution, one deletion of 5 words
    assert out["cer"] == pytest.approx(5 / 16)  # "c"->"b"; " dog" deleted; 16 characters


def test_empty_hypotheses_and_references():
    # An empty hypothesis deletes everything; an empty reference adds its hypothesis as
    # insertions to the corpus's edits (and nothing to its length).
    assert asr_metrics.error_rates(["a b"], [""]) == {"wer": 1.0, "cer": 1.0}
    out = asr_metrics.error_rates(["", "a b"], ["x y", "a b"])
    assert out["wer"] == pytest.approx(2 / 2) and out["cer"] == pytest.approx(3 / 3)
    with pytest.raises(ValueError, match="at least one non-empty reference"):
        asr_metrics.error_rates(["", "?!"], ["x", ""])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        asr_metrics.error_rates(["a", "b"], ["a"])
