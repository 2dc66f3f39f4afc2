"""The grammar-sentence generator and its committed 6000-sentence output."""

import pytest

from glmvoice_jax.corpora import espeak_corpus, grammar_sentences


def test_committed_6k_file_is_the_generator_output_and_keeps_the_held_out_sentences():
    base = espeak_corpus.read_sentences(espeak_corpus.SENTENCE_SETS["grammar"])
    big = espeak_corpus.read_sentences(espeak_corpus.SENTENCE_SETS["grammar_6k"])
    assert len(big) == 6000 and len(set(big)) == 6000
    assert big[: len(base)] == base  # same held-out sentences (every 10th), in the same order
    assert all(map(grammar_sentences.in_grammar, big))
    assert big == grammar_sentences.generate(6000, seed=0, keep=base)
    split = espeak_corpus.plan(big, variants_per_sentence=1)
    heldout = {u["text"] for u in split if u["split"] == "heldout"}
    train = {u["text"] for u in split if u["split"] == "train"}
    assert len(heldout) == 600 and not heldout & train


def test_generate_is_seeded_and_checks_what_it_keeps():
    a = grammar_sentences.generate(50, seed=1)
    assert a == grammar_sentences.generate(50, seed=1) != grammar_sentences.generate(50, seed=2)
    assert grammar_sentences.in_grammar("Her mother walked home by the lake at noon.")
    assert not grammar_sentences.in_grammar("Her mother walked home by the sea at noon.")
    with pytest.raises(ValueError, match="not in the grammar"):
        grammar_sentences.generate(5, keep=["The cat sat on the mat."])
    with pytest.raises(ValueError, match="kept sentences"):
        grammar_sentences.generate(1, keep=a[:2])
