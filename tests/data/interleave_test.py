import numpy as np
import pytest

from glmvoice_jax.data import interleave, prompts, token_layout

LAYOUT = token_layout.get("glm4_voice")
BOA, EOA = LAYOUT.special("<|begin_of_audio|>"), LAYOUT.special("<|end_of_audio|>")


def _check_spans(spans, n, min_gap=1):
    prev_end = -min_gap
    for a, b in spans:
        assert 0 <= a < b <= n
        assert a - prev_end >= min_gap
        prev_end = b


@pytest.mark.parametrize("n", [300, 1000])
def test_span_statistics_match_lambda_and_eta(n):
    cfg = interleave.SpanConfig()  # λ = 10, η = 0.3
    lengths, covered = [], 0
    for doc in range(1500):
        spans = interleave.select_spans(np.random.default_rng([7, doc]), n, cfg)
        _check_spans(spans, n)
        lengths += [b - a for a, b in spans]
        covered += sum(b - a for a, b in spans)
    assert abs(np.mean(lengths) - 10) < 0.3
    assert abs(covered / (1500 * n) - 0.3) < 0.005
    assert min(lengths) >= 1


def test_reach_rule_overshoots_and_nearest_does_not():
    eta = {}
    for stop in interleave.STOP_RULES:
        cfg = interleave.SpanConfig(stop=stop)
        cov = sum(
            sum(b - a for a, b in interleave.select_spans(np.random.default_rng(d), 150, cfg))
            for d in range(2000)
        )
        eta[stop] = cov / (2000 * 150)
    assert eta["reach"] > 0.32 and abs(eta["nearest"] - 0.3) < 0.01


def test_placement_is_uniform_and_seeded():
    rng = np.random.default_rng(0)
    starts = [interleave.place(rng, 12, [3])[0][0] for _ in range(5000)]
    counts = np.bincount(starts, minlength=10)
    assert len(counts) == 10 and counts.min() > 400  # 10 equally likely starts
    a = interleave.select_spans(np.random.default_rng(5), 500, interleave.SpanConfig())
    b = interleave.select_spans(np.random.default_rng(5), 500, interleave.SpanConfig())
    assert a == b


def test_spans_that_cannot_fit_are_dropped():
    spans = interleave.place(np.random.default_rng(0), 7, [3, 3, 3])
    assert spans == [(0, 3), (4, 7)] or [b - a for a, b in spans] == [3, 3]
    _check_spans(spans, 7)
    assert interleave.place(np.random.default_rng(0), 2, [5]) == []
    assert interleave.select_spans(np.random.default_rng(0), 2, interleave.SpanConfig()) == []
    with pytest.raises(ValueError, match="ratio"):
        interleave.SpanConfig(ratio=1.5)


def test_build_document_replaces_spans_with_wrapped_speech():
    text = np.arange(100, 120, dtype=np.int32)
    spans = [(2, 5), (10, 11)]
    codes = [np.array([1, 2]), np.array([7, 8, 9])]
    ex = interleave.build_document(text, spans, codes, LAYOUT, source="web")
    off = LAYOUT.audio_offset
    expected = (
        LAYOUT.bos_ids
        + [100, 101, BOA, off + 1, off + 2, EOA]
        + list(range(105, 110))
        + [BOA, off + 7, off + 8, off + 9, EOA]
        + list(range(111, 120))
        + [LAYOUT.eos_id]
    )
    assert ex.tokens.tolist() == expected
    assert ex.loss_mask.all() and ex.kind == "interleaved" and ex.source == "web"
    with pytest.raises(ValueError, match="out of order"):
        interleave.build_document(text, [(5, 8), (2, 3)], codes, LAYOUT, source="web")


def test_asr_tts_speech_templates():
    off, eot = LAYOUT.audio_offset, LAYOUT.eos_id
    asr = prompts.asr([3, 4], [50, 51], LAYOUT, source="ls")
    assert asr.tokens.tolist() == LAYOUT.bos_ids + [BOA, off + 3, off + 4, EOA, 50, 51, eot]
    assert asr.loss_mask.tolist() == [0] * 6 + [1, 1, 1]
    tts = prompts.tts([50, 51], [3, 4], LAYOUT, source="ls")
    assert tts.tokens.tolist() == LAYOUT.bos_ids + [50, 51, BOA, off + 3, off + 4, EOA]
    assert tts.loss_mask.tolist() == [0] * 5 + [1, 1, 1]
    assert tts.tokens[:5].tolist() == prompts.tts_prompt([50, 51], LAYOUT).tolist()
    sp = prompts.speech([3], LAYOUT, source="ls")
    assert sp.tokens.tolist() == LAYOUT.bos_ids + [BOA, off + 3, EOA] and sp.loss_mask.all()
    tx = prompts.text([50], LAYOUT, source="web")
    assert tx.tokens.tolist() == LAYOUT.bos_ids + [50, eot] and tx.kind == "text"
    with pytest.raises(ValueError, match="no speech tokens"):
        prompts.speech([], LAYOUT, source="ls")
    with pytest.raises(ValueError, match="codebook"):
        prompts.asr([16384], [50], LAYOUT, source="ls")
