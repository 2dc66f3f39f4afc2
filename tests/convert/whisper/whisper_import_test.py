"""glmvoice-import of Whisper checkpoints: the GLM-4-Voice tokenizer release tokenizes the fixture
audio from the Orbax checkpoint, a stock Whisper's params equal its HF tensors after the
documented renames, the trainer and the tokenizer read the result, and bad inputs are named.
"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from glmvoice_jax import audio, checkpoint
from glmvoice_jax.cli import import_checkpoint
from glmvoice_jax.convert.whisper import hf_whisper as cw
from glmvoice_jax.convert.whisper import whisper_import as wi
from glmvoice_jax.inference import speech_tokenization
from glmvoice_jax.models.whisper_vq import WhisperVQ, WhisperVQConfig
from tests.convert.whisper.hf_whisper_test import FIXTURE, MIN_AGREEMENT, _agreements, _jsonl

# A tiny stock Whisper: bidirectional, symmetric convs, no pooling, no quantizer.
STOCK = WhisperVQConfig(
    num_mels=16, embed_dim=8, num_heads=2, mlp_dim=16, num_layers=2, max_source_positions=16,
    use_causal_conv=False, attention_block_size=None, pooling_kernel=1, pooling_position=None,
    quantize_position=None, vocab_size=272, num_decoder_layers=1, num_decoder_heads=2,
    decoder_mlp_dim=16, max_target_positions=8,
)  # fmt: skip
SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>",
            "<|transcribe|>", "<|notimestamps|>")  # fmt: skip
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"))


def _import(src, dst, *flags):
    return import_checkpoint.main(
        ["glmvoice-import", f"--checkpoint={src}", f"--output={dst}", *flags]
    )


def _write_tokenizer_files(d, num_mels):
    """The HF Whisper tokenizer file set, minimal: 256 byte tokens, 4 merges, the specials."""
    byte_alias = {b: c for c, b in cw._byte_decoder().items()}
    vocab = {byte_alias[b]: b for b in range(256)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    added = {t: len(vocab) + i for i, t in enumerate(SPECIALS)}
    files = {
        "vocab.json": vocab,
        "added_tokens.json": added,
        "special_tokens_map.json": {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        },
        "tokenizer_config.json": {
            "tokenizer_class": "WhisperTokenizer",
            "added_tokens_decoder": {
                str(i): {"content": t, "special": True} for t, i in added.items()
            },
        },
        "preprocessor_config.json": {
            "feature_extractor_type": "WhisperFeatureExtractor",
            "feature_size": num_mels,
            "sampling_rate": 16000,
            "hop_length": 160,
            "n_fft": 400,
        },
    }
    for name, data in files.items():
        (d / name).write_text(json.dumps(data))
    (d / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """(HF dir, its tensors, the imported checkpoint)."""
    root = tmp_path_factory.mktemp("stock")
    src = root / "whisper"
    tensors = wi.write_synthetic(str(src), STOCK, cw.STOCK)
    _write_tokenizer_files(src, STOCK.num_mels)
    _import(src, root / "ckpt", "--dtype=float32")
    return src, tensors, str(root / "ckpt")


def _restore(ckpt):
    """(config, model) from an imported checkpoint, as the trainer's init_from reads it."""
    cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt))
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0))))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        nnx.to_pure_dict(state),
    )
    nnx.replace_by_pure_dict(state, checkpoint.restore_params(ckpt, target))
    return cfg, nnx.merge(graphdef, state)


def _documented_rename(key, value):
    """HF key -> (our path, value in our layout before head splitting), from the documented rules:
    Linear W(out, in) -> kernel W.T; Conv1d W(out, in, k) -> kernel (k, in, out); LayerNorm
    weight -> scale; embeddings keep their name; the VQ tensors live under encoder.quantizer.
    """
    *path, leaf = [int(p) if p.isdigit() else p for p in key.split(".")[1:]]  # drop "model."
    if leaf in ("ema_count", "ema_weight"):
        return ("encoder", "quantizer", leaf), value
    name = path[-1]
    if name == "codebook":
        return ("encoder", "quantizer", "codebook"), value
    if name.startswith("embed_"):
        return tuple(path), value
    if leaf == "bias":
        return (*path, "bias"), value
    if name.endswith("layer_norm"):
        return (*path, "scale"), value
    if name.startswith("conv"):
        return (*path, "kernel"), value.transpose(2, 1, 0)
    return (*path, "kernel"), value.T


def _assert_params_are_renamed_tensors(model, tensors):
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model)))
    ours = {tuple(k.key for k in path): np.asarray(v) for path, v in leaves}
    seen = set()
    for key, value in tensors.items():
        path, want = _documented_rename(key, value)
        got = ours[path]
        assert got.dtype == want.dtype, key
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=key)  # bit-exact
        seen.add(path)
    assert set(ours) - seen <= {("encoder", "quantizer", "ema_steps")}


# --- (a) The GLM-4-Voice tokenizer release --------------------------------------------------


def test_release_import_tokenizes_the_fixture_audio(tmp_path, capsys):
    dst = tmp_path / "tok"
    meta = _import(FIXTURE, dst)
    printed = capsys.readouterr().out
    assert "WhisperVQEncoder: 4 encoder layers, d=48, codebook 64 after layer 2" in printed
    assert "12.5 Hz x 6 bits = 75 bps" in printed
    assert meta["model_class"] == "WhisperVQConfig" and "tokenizer" not in meta
    assert meta["extra"]["bitrate_bps"] == 75.0 and meta["extra"]["token_rate_hz"] == 12.5
    assert meta["extra"]["source"]["files"] == ["preprocessor_config.json"]
    assert checkpoint.read_meta(str(dst)) == meta
    assert (dst / "tokenizer" / "preprocessor_config.json").is_file()

    cfg, model = speech_tokenization.load_model(str(dst))
    assert cfg == cw.load_checkpoint(FIXTURE)[0]
    _assert_params_are_renamed_tensors(model, cw.read_safetensors(FIXTURE))
    wavs = [audio.load_audio(FIXTURE / r["audio"]) for r in _jsonl("audio.jsonl")]
    agreement = _agreements(model, wavs)
    assert all(a >= MIN_AGREEMENT for a in agreement.values()), agreement  # -1: other length

    # The release has no text tokenizer: the trainer's whisper text side says so.
    with pytest.raises(ValueError, match="records no text tokenizer"):
        cw.load_text_tokenizer(str(dst))


def test_param_dtype_applies_and_ema_stays_float32(tmp_path):
    meta = _import(FIXTURE, tmp_path / "bf16", "--dtype=bfloat16")
    assert meta["model"]["param_dtype"] == "bfloat16"
    _, model = _restore(str(tmp_path / "bf16"))
    q = model.encoder.quantizer
    assert model.encoder.conv1.kernel[...].dtype == q.codebook[...].dtype == jax.numpy.bfloat16
    assert q.ema_count[...].dtype == q.ema_weight[...].dtype == np.float32


# --- (b) Stock Whisper --------------------------------------------------------------------


def test_stock_params_are_the_hf_tensors_and_the_model_runs(stock):
    src, tensors, ckpt = stock
    meta = checkpoint.read_meta(ckpt)
    assert meta["extra"]["source"]["architecture"] == cw.STOCK
    assert "bitrate_bps" not in meta["extra"]
    cfg, model = _restore(ckpt)
    assert cfg == STOCK and model.encoder.quantizer is None and model.decoder is not None
    _assert_params_are_renamed_tensors(model, tensors)

    rng = np.random.default_rng(0)
    mel = rng.normal(size=(1, 12, STOCK.num_mels)).astype(np.float32)
    tokens = np.array([[261, 262, 264, 265, 40]], np.int32)
    logits, enc = nnx.jit(lambda m, *a: m(*a))(
        model, mel, np.ones((1, 12), bool), tokens, np.ones((1, 5), bool)
    )
    assert enc.hidden.shape == (1, 6, STOCK.embed_dim)
    assert logits.shape == (1, 5, STOCK.vocab_size) and np.isfinite(np.asarray(logits)).all()
    with pytest.raises(ValueError, match="no quantizer"):  # tokenizing needs a trained VQ
        speech_tokenization.load_model(ckpt)


def test_stock_text_tokenizer_travels_with_the_checkpoint(stock):
    src, _, ckpt = stock
    files = sorted(os.listdir(os.path.join(ckpt, "tokenizer")))
    assert files == sorted(["tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                            "special_tokens_map.json", "tokenizer_config.json",
                            "preprocessor_config.json"])  # fmt: skip
    want = cw.load_text_tokenizer(str(src))
    text = "the thin tent"
    for tok in (
        cw.load_text_tokenizer(ckpt),  # what the trainer's whisper text side calls on init_from
        cw.load_text_tokenizer(os.path.join(ckpt, "0")),  # a step directory
        checkpoint.text_tokenizer(ckpt),
    ):
        assert tok.encode(text) == want.encode(text)
        assert tok.decode(tok.encode(text, add_prefix=False)) == text
        assert tok.specials == want.specials
    extra = checkpoint.read_meta(ckpt)["extra"]
    assert extra["text_prefix"] == [want.specials[t] for t in cw.WHISPER_PREFIX]
    assert extra["text_eos"] == want.specials[cw.WHISPER_EOS]


def test_trainer_init_from_the_imported_checkpoint(stock):
    """setup.init_from copies the stock weights into a VQ model; the quantizer stays fresh."""
    from glmvoice_jax.trainers import speech_tokenizer_setup as setup  # the trainer's own reader

    _, tensors, ckpt = stock
    vq_cfg = dataclasses.replace(
        STOCK, use_causal_conv=True, attention_block_size=4, pooling_kernel=2,
        pooling_position=1, quantize_position=1, codebook_size=8,
    )  # fmt: skip
    abstract = nnx.to_pure_dict(
        nnx.state(nnx.eval_shape(lambda: WhisperVQ(vq_cfg, rngs=nnx.Rngs(0))))
    )
    params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    params, fresh = setup.init_from(ckpt, vq_cfg, params, jax.tree.map(lambda _: device, params))
    assert fresh
    np.testing.assert_array_equal(
        params["decoder"]["embed_tokens"], tensors["model.decoder.embed_tokens.weight"]
    )
    rows = params["encoder"]["embed_positions2"].shape[0]
    np.testing.assert_array_equal(
        params["encoder"]["embed_positions2"],
        tensors["model.encoder.embed_positions.weight"][:rows],
    )


def test_synthetic_config_round_trips():
    assert cw.config_from_hf(wi.hf_config(STOCK, cw.STOCK)) == STOCK
    vq = cw.config_from_hf(cw.read_hf_config(FIXTURE))
    assert cw.config_from_hf(wi.hf_config(vq, cw.VQ_ENCODER)) == vq


# --- (c) Bad input --------------------------------------------------------------------------


def _fixture_copy(tmp_path, *, config=None, tensors=None, weights=True):
    d = tmp_path / "src"
    d.mkdir()
    hf = json.loads((FIXTURE / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(hf if config is None else config))
    if tensors is not None:
        save_file(tensors, str(d / "model.safetensors"))
    elif weights:
        shutil.copy(FIXTURE / "model.safetensors", d / "model.safetensors")
    return d, hf


def test_missing_weights_file_is_named(tmp_path):
    src, _ = _fixture_copy(tmp_path, weights=False)
    with pytest.raises(FileNotFoundError, match=f"{src}.*model.safetensors"):
        _import(src, tmp_path / "dst")
    assert not os.path.exists(tmp_path / "dst")
    assert os.listdir(tmp_path) == ["src"]  # no leftover temporary directory


def test_wrong_shape_names_the_tensor_and_directory(tmp_path):
    tensors = cw.read_safetensors(FIXTURE)
    tensors["model.encoder.layers.1.fc1.weight"] = np.zeros((95, 48), np.float32)
    src, _ = _fixture_copy(tmp_path, tensors=tensors)
    with pytest.raises(ValueError, match=rf"{src} .*layers.1.fc1.weight: \(95, 48\) \(expected"):
        _import(src, tmp_path / "dst")
    assert not os.path.exists(tmp_path / "dst")


def test_unknown_config_fields_are_named(tmp_path):
    hf = json.loads((FIXTURE / "config.json").read_text())
    src, _ = _fixture_copy(tmp_path, config=dict(hf, quantize_groups=2, _private_note="ok"))
    with pytest.raises(
        ValueError, match=rf"{src}/config.json .*unknown fields \['quantize_groups'"
    ):
        _import(src, tmp_path / "dst")


def test_flags_and_preprocessor_that_do_not_apply(tmp_path):
    src, _ = _fixture_copy(tmp_path)
    with pytest.raises(ValueError, match="--add_speech_tokens .* drop it"):
        _import(src, tmp_path / "dst", "--add_speech_tokens=16384")
    pre = json.loads((FIXTURE / "preprocessor_config.json").read_text())
    (src / "preprocessor_config.json").write_text(json.dumps(dict(pre, feature_size=80)))
    with pytest.raises(ValueError, match=r"preprocessor_config.json: \{'feature_size': 80\}"):
        _import(src, tmp_path / "dst")
    (tmp_path / "dst").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        _import(FIXTURE, tmp_path / "dst")
