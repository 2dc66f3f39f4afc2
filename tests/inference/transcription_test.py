"""WhisperVQEncoder.from_codes and TokenTranscriber: the ASR head applied to speech tokens."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax.inference import transcription
from glmvoice_jax.models import whisper_vq

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "whisper_vq")


@pytest.mark.parametrize("kernel", [1, 4])
def test_from_codes_equals_the_encoder_after_its_quantizer(kernel):
    cfg = dataclasses.replace(
        whisper_vq.VARIANTS["tiny"], pooling_kernel=kernel, attention_block_size=8
    )
    model = whisper_vq.WhisperVQ(cfg, rngs=nnx.Rngs(0))
    mel = jax.random.normal(jax.random.key(1), (2, 96, cfg.num_mels))
    mel_mask = jnp.arange(96)[None, :] < jnp.array([[96], [61]])
    full = model.encoder(mel, mel_mask)
    tail = model.encoder.from_codes(full.ids, full.token_mask)
    valid = np.asarray(full.mask)
    np.testing.assert_array_equal(np.asarray(tail.mask), valid)
    got, want = np.asarray(tail.hidden)[valid], np.asarray(full.hidden)[valid]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_find_text_tokenizer_names_the_places(tmp_path):
    with pytest.raises(FileNotFoundError, match="speech-tokenizer trainer"):
        transcription.find_text_tokenizer(str(tmp_path))
    (tmp_path / "checkpoints" / "tokenizer").mkdir(parents=True)
    (tmp_path / "checkpoints" / "tokenizer" / "meta.json").write_text(json.dumps({}))
    want = str(tmp_path / "checkpoints" / "tokenizer")
    assert transcription.find_text_tokenizer(str(tmp_path)) == want
    step = tmp_path / "checkpoints" / "7"
    step.mkdir()
    assert transcription.find_text_tokenizer(str(step)) == want
