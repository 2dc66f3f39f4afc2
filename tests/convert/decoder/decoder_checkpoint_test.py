"""Release dir → project Orbax checkpoint (import_decoder) → model (load_decoder_checkpoint)."""

import os
import shutil

import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import checkpoint
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.convert.decoder.decoder_pt import load_decoder
from glmvoice_jax.models.speech_decoder import VARIANTS
from glmvoice_jax.models.speech_decoder.config import config_to_dict

FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "fixtures", "decoder"
)


def _flat(model):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


def test_import_then_load_round_trips_every_parameter(tmp_path):
    dst = tmp_path / "ckpt"
    meta = decoder_checkpoint.import_decoder(FIXTURES, dst)
    assert meta["model_class"] == "DecoderConfig"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary left next to it
    read = checkpoint.read_meta(str(dst))
    assert read == meta
    assert checkpoint.model_config_from_meta(read) == VARIANTS["tiny"]
    want = _flat(load_decoder(FIXTURES))
    for ckpt in (dst, dst / "0"):  # manager root or step dir
        got = _flat(decoder_checkpoint.load_any(str(ckpt)))
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(FileExistsError, match="already exists"):
        decoder_checkpoint.import_decoder(FIXTURES, dst)


def test_failed_import_leaves_nothing_and_errors_name_the_problem(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(os.path.join(FIXTURES, "config.yaml"), src)
    shutil.copy(os.path.join(FIXTURES, "flow.pt"), src)
    with pytest.raises(FileNotFoundError, match=r"missing \['hift.pt'\]"):
        decoder_checkpoint.import_decoder(src, tmp_path / "a")
    shutil.copy(os.path.join(FIXTURES, "flow.pt"), src / "hift.pt")  # the wrong weights
    with pytest.raises(ValueError, match="decoder checkpoint does not match the config"):
        decoder_checkpoint.import_decoder(src, tmp_path / "a")
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_meta_with_unknown_config_fields_is_rejected():
    meta = {"model_class": "DecoderConfig", "model": config_to_dict(VARIANTS["tiny"])}
    meta["model"]["flow"]["mystery"] = 1
    with pytest.raises(ValueError, match=r"unknown fields \['mystery'\]"):
        checkpoint.model_config_from_meta(meta)


def test_loading_another_model_class_is_explained(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "read_meta", lambda _: {"model_class": "GLMConfig"})
    with pytest.raises(ValueError, match="holds a 'GLMConfig' model, not the speech decoder"):
        decoder_checkpoint.load_decoder_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        decoder_checkpoint.load_any(str(tmp_path / "nope"))
