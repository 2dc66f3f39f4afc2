"""--add_speech_tokens: the layout and the new-row rule of glm4voice.md §12 #11."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from glmvoice_jax import checkpoint
from glmvoice_jax.convert.glm import chatglm, glm_weights, speech_vocab
from glmvoice_jax.convert.io import orbax_stream, safetensors_dir
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.models import glm

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "fixtures")


def _expected_rows(src: np.ndarray, n_new: int, seed: int, stream: int) -> np.ndarray:
    """The documented rule, written out directly: mean + 0.1 * std * z in ascending id order."""
    x = src.astype(np.float64)
    z = np.random.default_rng([seed, stream]).standard_normal((n_new, x.shape[1]))
    return x.mean(0) + 0.1 * x.std(0) * z


def test_row_stats_match_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 7))
    stats = speech_vocab.RowStats(7)
    for b0 in range(0, 1000, 96):
        stats.update(x[b0 : b0 + 96])
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, x.std(0), rtol=1e-12)


def test_extend_generic_vocab(tmp_path):
    src = os.path.join(FIXTURES, "glm_chatglm")
    meta = glm_weights.import_glm(
        src, str(tmp_path / "ck"), chatglm.FORMAT, add_speech_tokens=64, seed=3
    )
    layout = token_layout_lib.TokenLayout.from_json(meta["token_layout"])
    assert layout.special("<|begin_of_audio|>") == 640
    assert layout.special("<|end_of_audio|>") == 641
    assert (layout.audio_offset, layout.num_audio_tokens, layout.vocab_size) == (642, 64, 768)
    assert meta["model"]["vocab_size"] == 768
    assert meta["extra"]["speech_extension"]["num_audio_tokens"] == 64

    tensors = dict(safetensors_dir.iter_tensors(src))
    emb_src = tensors["transformer.embedding.word_embeddings.weight"]
    head_src = tensors["transformer.output_layer.weight"]
    reader = orbax_stream.ParamsReader(str(tmp_path / "ck" / "0"))
    emb = reader.read("embed.embedding")
    head = reader.read("head.kernel").T  # (V, D) rows
    np.testing.assert_array_equal(emb[:640], emb_src)
    np.testing.assert_array_equal(head[:640], head_src)
    want_emb = _expected_rows(emb_src, 128, seed=3, stream=0).astype(np.float32)
    want_head = _expected_rows(head_src, 128, seed=3, stream=1).astype(np.float32)
    np.testing.assert_allclose(emb[640:], want_emb, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(head[640:], want_head, rtol=1e-6, atol=1e-7)
    # The noise really is 0.1 x the per-dim std around the mean.
    z = (emb[640:] - emb_src.mean(0)) / emb_src.std(0)
    assert 0.07 < z.std() < 0.13


def test_glm4_becomes_glm4_voice_and_is_block_independent(tmp_path, monkeypatch):
    """A GLM-4-9B vocab (151552 rows) + 16384 -> exactly the glm4_voice layout (168960 rows)."""
    cfg = glm.GLMConfig(
        vocab_size=151552,
        embed_dim=8,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        mlp_dim=8,
    )
    src = tmp_path / "glm4"
    glm_weights.write_synthetic(str(src), cfg, chatglm.FORMAT, seed=1)
    meta = glm_weights.import_glm(
        str(src), str(tmp_path / "a"), chatglm.FORMAT, add_speech_tokens=16384
    )
    assert meta["token_layout"] == token_layout_lib.LAYOUTS["glm4_voice"].to_json()
    monkeypatch.setattr(glm_weights, "BLOCK_BYTES", 200_000)  # ~6250 rows per block
    glm_weights.import_glm(str(src), str(tmp_path / "b"), chatglm.FORMAT, add_speech_tokens=16384)

    emb_src = dict(safetensors_dir.iter_tensors(str(src)))[
        "transformer.embedding.word_embeddings.weight"
    ]
    a = orbax_stream.ParamsReader(str(tmp_path / "a" / "0"))
    b = orbax_stream.ParamsReader(str(tmp_path / "b" / "0"))
    for name in ("embed.embedding", "head.kernel"):
        np.testing.assert_array_equal(a.read(name), b.read(name))
    emb = a.read("embed.embedding")
    assert emb.shape == (168960, 8)
    markers = [151343, 151344]
    keep = np.ones(151552, bool)
    keep[markers] = False
    np.testing.assert_array_equal(emb[:151552][keep], emb_src[keep])
    new = np.concatenate([markers, np.arange(151552, 168960)])
    want = _expected_rows(emb_src, len(new), seed=0, stream=0).astype(np.float32)
    np.testing.assert_allclose(emb[new], want, rtol=1e-6, atol=1e-7)

    out = tmp_path / "export"
    glm_weights.export_glm(str(tmp_path / "a"), str(out), chatglm.FORMAT)
    assert json.loads(pathlib.Path(out / "config.json").read_text())["padded_vocab_size"] == 168960
    assert checkpoint.read_meta(str(tmp_path / "a"))["model"]["vocab_size"] == 168960


def test_extension_errors():
    with pytest.raises(ValueError, match="already has 16384 speech tokens"):
        speech_vocab.extended_layout(token_layout_lib.LAYOUTS["glm4_voice"], 16384)
    with pytest.raises(ValueError, match="must be positive"):
        speech_vocab.extended_layout(token_layout_lib.LAYOUTS["glm4"], 0)


def test_export_lists_the_new_tokens_in_tokenizer_config(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(FIXTURES, "glm_chatglm"), src)
    entry = {
        "content": "<|endoftext|>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    (src / "tokenizer_config.json").write_text(
        json.dumps({"added_tokens_decoder": {"600": entry}, "model_max_length": 8192})
    )
    meta = glm_weights.import_glm(
        str(src), str(tmp_path / "ck"), chatglm.FORMAT, add_speech_tokens=4
    )
    layout = token_layout_lib.TokenLayout.from_json(meta["token_layout"])
    glm_weights.export_glm(str(tmp_path / "ck"), str(tmp_path / "hf"), chatglm.FORMAT)
    tc = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    added = {int(i): e["content"] for i, e in tc["added_tokens_decoder"].items()}
    assert added[600] == "<|endoftext|>" and tc["model_max_length"] == 8192
    assert added[layout.special("<|begin_of_audio|>")] == "<|begin_of_audio|>"
    assert added[layout.special("<|end_of_audio|>")] == "<|end_of_audio|>"
    codes = [added[layout.audio_offset + k] for k in range(4)]
    assert codes == [f"<|audio_{k}|>" for k in range(4)]
