import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax.data import prompts, token_layout
from glmvoice_jax.inference import sampling
from glmvoice_jax.models import glm

LAYOUT = token_layout.get("demo")
CFG = dataclasses.replace(glm.VARIANTS["tiny"], num_layers=2, remat_policy="none")


@pytest.fixture(scope="module")
def model():
    return glm.GLMDecoder(CFG, rngs=nnx.Rngs(0))


@nnx.jit
def _forward(model, tokens):
    return model(tokens)


def _greedy_reference(model, text, limit):
    """Greedy continuation by full forwards, restricted to speech ids + <|end_of_audio|>."""
    eoa = LAYOUT.special("<|end_of_audio|>")
    allowed = np.zeros(CFG.vocab_size, bool)
    allowed[LAYOUT.audio_offset : LAYOUT.audio_end] = True
    allowed[eoa] = True
    seq = list(prompts.tts_prompt(text, LAYOUT))
    codes = []
    for step in range(limit + 1):
        padded = np.zeros((1, 64), np.int32)  # one compile; causal, so the padding is unseen
        padded[0, : len(seq)] = seq
        logits = np.asarray(_forward(model, jnp.asarray(padded))[0, len(seq) - 1])
        logits = np.where(allowed, logits, -np.inf)
        if step == 0:
            logits[eoa] = -np.inf  # min_tokens = 1
        nxt = eoa if step >= limit else int(np.argmax(logits))
        if nxt == eoa:
            break
        codes.append(nxt - LAYOUT.audio_offset)
        seq.append(nxt)
    return codes


def test_greedy_matches_full_forward(model):
    cfg = sampling.SamplingConfig(temperature=0.0, max_len_ratio=1.0, max_len_extra=3)
    sampler = sampling.SpeechSampler(model, LAYOUT, cfg, devices=jax.local_devices()[:1])
    texts = [np.frombuffer(b"hello there", np.uint8), np.frombuffer(b"a", np.uint8)]
    out = sampler.sample(texts, seeds=[1, 2])
    for text, codes in zip(texts, out):
        limit = cfg.max_tokens(len(text))
        assert codes.tolist() == _greedy_reference(model, text, limit)
        assert 1 <= len(codes) <= limit


def test_seeded_sampling_is_independent_of_batching_and_devices(model):
    cfg = sampling.SamplingConfig(temperature=1.0, top_p=0.9, max_len_ratio=2.0, batch_size=8)
    texts = [np.frombuffer(f"span {i}".encode() * (1 + i % 2), np.uint8) for i in range(6)]
    seeds = [100 + i for i in range(6)]
    sharded = sampling.SpeechSampler(model, LAYOUT, cfg, devices=jax.devices()[:2])
    together = sharded.sample(texts, seeds)
    one = sampling.SpeechSampler(
        model, LAYOUT, dataclasses.replace(cfg, batch_size=1), devices=jax.devices()[:1]
    )
    alone = [one.sample([t], [s])[0] for t, s in zip(texts[:3], seeds[:3])]
    for a, b in zip(alone, together[:3]):
        np.testing.assert_array_equal(a, b)
    for text, codes in zip(texts, together):
        assert 1 <= len(codes) <= cfg.max_tokens(len(text))
        assert codes.min() >= 0 and codes.max() < LAYOUT.num_audio_tokens
    again = sharded.sample(texts, [s + 1 for s in seeds])
    assert any(not np.array_equal(a, b) for a, b in zip(again, together))
    assert sharded.stats["spans"] == 12


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="top_p"):
        sampling.SamplingConfig(top_p=0.0)
    with pytest.raises(ValueError, match="text id"):
        prompts.tts_prompt([300], LAYOUT)
