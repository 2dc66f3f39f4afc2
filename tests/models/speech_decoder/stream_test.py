"""The token2wav state machine with index-tracking stubs reproduces decoder.md §12.3 exactly."""

import dataclasses

import numpy as np
import pytest

from glmvoice_jax.models.speech_decoder import VARIANTS
from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens
from glmvoice_jax.models.speech_decoder.stream import Token2Wav, stream_decode


class _Stub:
    """Config-only stand-in for SpeechDecoder; flow/HiFT replaced by frame-index stubs."""

    config = VARIANTS["glm4_voice_decoder"]


def _token2wav(log):
    def flow_fn(tokens, prompt_tokens, prompt_feat):
        n = tokens.size + prompt_tokens.size
        t = frames_from_tokens(n)
        log.append((n, t))
        # Mel value = absolute frame index of the whole (prompt + new) sequence.
        return np.repeat(np.arange(prompt_feat.shape[0], t, dtype=np.float32)[:, None], 80, 1)

    def hift_fn(mel, cache_source):
        wav = np.repeat(mel[:, 0], 256)
        if cache_source is not None:
            wav = wav.copy()
            wav[: cache_source.size] = cache_source
        return wav, wav

    return Token2Wav(_Stub(), flow_fn=flow_fn, hift_fn=hift_fn)


def test_web_demo_schedule_reproduces_the_reference_table():
    log = []
    wav, chunks = stream_decode(_Stub(), np.zeros(700, np.int32), token2wav=_token2wav(log))
    table = [
        (c.new_tokens, c.prompt_tokens, c.prompt_feat_frames, t, c.returned_mel_frames, c.samples)
        for c, (_, t) in zip(chunks, log)
    ]
    assert table == [
        (25, 0, 0, 172, 138, 35072),
        (50, 25, 138, 516, 345, 88064),
        (100, 75, 483, 1205, 689, 176128),
        (150, 175, 1172, 2239, 1034, 264448),
        (200, 325, 2206, 3617, 1378, 352512),
        (175, 525, 3584, 4823, 1240, 317440),
    ]
    assert [c.finalize for c in chunks] == [False] * 5 + [True]
    assert wav.size == 4819 * 256  # 4 frames short of the offline 4823


def test_fixed_mode_drops_the_duplicated_frame():
    log = []
    _, chunks = stream_decode(
        _Stub(), np.zeros(700, np.int32), parity=False, token2wav=_token2wav(log)
    )
    # prompt_feat then always ends where the stored overlap starts: T(prev) - 34.
    prev_t = [t for _, t in log][:-1]
    assert [c.prompt_feat_frames for c in chunks][1:] == [t - 34 for t in prev_t]


def test_block_boundary_end_never_finalizes():
    _, chunks = stream_decode(_Stub(), np.zeros(75, np.int32), token2wav=_token2wav([]))
    assert [dataclasses.astuple(c)[0] for c in chunks] == [25, 50]
    assert not any(c.finalize for c in chunks)


def test_bounded_history_gives_the_flow_the_tail_of_the_history():
    """history_tokens=H: the flow sees at most H + block tokens, its prompt_feat is the tail of
    exact streaming's prompt_feat, and every chunk returns and emits as much as in exact mode."""
    exact_log, log, given = [], [], []
    _, exact = stream_decode(_Stub(), np.zeros(700, np.int32), token2wav=_token2wav(exact_log))
    t2w = _token2wav(log)
    stub_flow = t2w.flow_fn

    def flow_fn(tokens, prompt_tokens, prompt_feat):
        given.append((tokens.size, prompt_feat.copy()))
        return stub_flow(tokens, prompt_tokens, prompt_feat)

    t2w.flow_fn = flow_fn
    mels = []
    _, chunks = stream_decode(
        _Stub(),
        np.zeros(700, np.int32),
        token2wav=t2w,
        history_tokens=60,
        on_chunk=lambda wav, mel, chunk: mels.append(mel),
    )
    assert [n for n, _ in log] == [25, 75, 160, 210, 260, 235]  # ≤ 60 + block tokens
    assert [c.prompt_tokens for c in chunks] == [0, 25, 60, 60, 60, 60]
    for field in ("new_tokens", "returned_mel_frames", "samples", "finalize"):
        assert [getattr(c, field) for c in chunks] == [getattr(c, field) for c in exact]
    for i, (_, feat) in enumerate(given):
        history = np.concatenate(mels[:i]) if i else np.zeros((0, 80), np.float32)
        assert feat.shape[0] == chunks[i].prompt_feat_frames
        np.testing.assert_array_equal(feat, history[history.shape[0] - feat.shape[0] :])


def test_too_short_history_is_refused():
    with pytest.raises(ValueError, match="history_tokens must be at least 10"):
        stream_decode(_Stub(), np.zeros(50, np.int32), token2wav=_token2wav([]), history_tokens=5)
