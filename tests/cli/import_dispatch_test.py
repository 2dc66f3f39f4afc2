"""glmvoice-import dispatches every release layout of the contract to its importer."""

import json
import os
import sys

import pytest

from glmvoice_jax import checkpoint
from glmvoice_jax.cli import import_checkpoint
from glmvoice_jax.convert.whisper import hf_whisper

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def test_decoder_directory_is_detected_and_imported(tmp_path):
    src = os.path.join(FIXTURES, "decoder")
    assert import_checkpoint.detect(src) == "decoder"
    meta = import_checkpoint.main(
        ["glmvoice-import", f"--checkpoint={src}", f"--output={tmp_path / 'd'}"]
    )
    assert meta["model_class"] == "DecoderConfig"
    assert checkpoint.read_meta(str(tmp_path / "d"))["model_class"] == "DecoderConfig"
    with pytest.raises(ValueError, match="GLM checkpoints only"):
        import_checkpoint.import_checkpoint(src, str(tmp_path / "e"), add_speech_tokens=4)
    assert not os.path.exists(tmp_path / "e")


def test_whisper_layouts_are_detected_and_user_errors_are_one_line(tmp_path, monkeypatch, capsys):
    src = os.path.join(FIXTURES, "whisper_vq")
    assert import_checkpoint.detect(src) == hf_whisper.VQ_ENCODER
    assert set(hf_whisper.ARCHITECTURES) <= set(import_checkpoint.IMPORTERS)
    stock = tmp_path / "stock"
    stock.mkdir()
    (stock / "config.json").write_text(json.dumps({"architectures": [hf_whisper.STOCK]}))
    assert import_checkpoint.detect(str(stock)) == hf_whisper.STOCK
    argv = [
        "glmvoice-import",
        f"--checkpoint={src}",
        f"--output={tmp_path / 'w'}",
        "--add_speech_tokens=4",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        import_checkpoint.run()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("glmvoice-import: error: ") and err.count("\n") == 1
    assert "Whisper checkpoint (WhisperVQEncoder): --add_speech_tokens" in err
    assert not os.path.exists(tmp_path / "w")
