"""glmvoice-import dispatches every release layout of the contract to its importer."""

import os

import pytest

from glmvoice_jax import checkpoint
from glmvoice_jax.cli import import_checkpoint

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def test_decoder_directory_is_detected_and_imported(tmp_path):
    src = os.path.join(FIXTURES, "decoder")
    assert import_checkpoint.detect(src) == "decoder"
    meta = import_checkpoint.main(["glmvoice-import", f"--src={src}", f"--dst={tmp_path / 'd'}"])
    assert meta["model_class"] == "DecoderConfig"
    assert checkpoint.read_meta(str(tmp_path / "d"))["model_class"] == "DecoderConfig"
    with pytest.raises(ValueError, match="GLM checkpoints only"):
        import_checkpoint.import_checkpoint(src, str(tmp_path / "e"), add_speech_tokens=4)
    assert not os.path.exists(tmp_path / "e")
