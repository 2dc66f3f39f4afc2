"""Config of the speech-tokenizer regularisers: tiny defaults and validation messages."""

import os

import pytest

from glmvoice_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name", ["12hz", "25hz", "50hz", "6hz"])
def test_defaults(name):
    path = os.path.join(REPO, "configs", f"tokenizer_{name}.py")
    tiny, full = (config_lib.load_config_file(path + arg) for arg in (":tiny", ""))
    assert tiny.loss.label_smoothing == 0.1 and full.loss.label_smoothing == 0.0
    for c in (tiny, full):
        assert c.augment.freq_masks == c.augment.time_masks == 0
        config_lib.validate_speech_tokenizer(c)
    assert tiny.input.espeak_sentences == "grammar_6k"


def test_validate_names_the_regulariser():
    c = config_lib.load_config_file(os.path.join(REPO, "configs", "tokenizer_12hz.py:tiny"))
    c.loss.label_smoothing = 1.0
    with pytest.raises(ValueError, match="label_smoothing"):
        config_lib.validate_speech_tokenizer(c)
    c.loss.label_smoothing = 0.1
    c.augment.time_frac = 1.5
    with pytest.raises(ValueError, match="time_frac"):
        config_lib.validate_speech_tokenizer(c)
