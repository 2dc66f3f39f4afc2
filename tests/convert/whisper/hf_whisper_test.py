"""Whisper / GLM-4-Voice tokenizer import: fixture tokens, stock Whisper math, bad inputs."""

import dataclasses
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file
from scipy.special import erf

from glmvoice_jax import audio
from glmvoice_jax.convert.whisper import hf_whisper as cw
from glmvoice_jax.inference import speech_tokenization
from glmvoice_jax.models.whisper_vq import WhisperVQ

FIXTURE = pathlib.Path(os.path.dirname(__file__)).parents[1] / "fixtures" / "whisper_vq"
MIN_AGREEMENT = 0.99  # fixture rule: same length and >= 99% per file (expected: 100%)


def _jsonl(name):
    with open(FIXTURE / name) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def imported():
    return cw.load_checkpoint(FIXTURE)


@pytest.fixture(scope="module")
def fixture_wavs():
    return [audio.load_audio(FIXTURE / r["audio"]) for r in _jsonl("audio.jsonl")]


def _agreements(model, wavs):
    expected = {r["id"]: np.array(r["tokens"]) for r in _jsonl("expected_tokens.jsonl")}
    got = speech_tokenization.tokenize_waveforms(model, wavs)
    out = {}
    for rec, tokens in zip(_jsonl("audio.jsonl"), got, strict=True):
        ref = expected[rec["id"]]
        out[rec["id"]] = float(np.mean(tokens == ref)) if tokens.shape == ref.shape else -1.0
    return out


def test_glm_tokenizer_fixture_config_and_buffers(imported):
    cfg, model = imported
    assert cfg.use_causal_conv and cfg.attention_block_size == 200
    assert (cfg.pooling_kernel, cfg.pooling_position, cfg.quantize_position) == (4, 2, 2)
    assert (cfg.codebook_size, cfg.embed_dim, cfg.num_layers) == (64, 48, 4)
    assert cfg.vq_loss_scale == 10.0 and cfg.restart_interval == 100 and cfg.ema_decay == 0.99
    assert cfg.num_decoder_layers == 0 and model.decoder is None
    q = model.encoder.quantizer
    np.testing.assert_array_equal(np.asarray(q.ema_count[...]), 1.0)
    np.testing.assert_array_equal(np.asarray(q.ema_weight[...]), np.asarray(q.codebook[...]))
    conv1 = np.asarray(model.encoder.conv1.kernel[...])
    hf = cw.read_safetensors(FIXTURE)
    np.testing.assert_array_equal(conv1, hf["model.encoder.conv1.weight"].transpose(2, 1, 0))


def test_glm_tokenizer_fixture_tokens(imported, fixture_wavs):
    agreement = _agreements(imported[1], fixture_wavs)
    assert all(a >= MIN_AGREEMENT for a in agreement.values()), agreement


def test_fixture_catches_a_missing_block_causal_mask(imported, fixture_wavs):
    """Negative control: bidirectional attention (padding mask only) fails >= 1 file."""
    cfg, model = imported
    no_block = dataclasses.replace(cfg, attention_block_size=None)
    bidirectional = nnx.eval_shape(lambda: WhisperVQ(no_block, rngs=nnx.Rngs(0)))
    nnx.update(bidirectional, nnx.state(model))
    agreement = _agreements(bidirectional, fixture_wavs)
    assert any(a < MIN_AGREEMENT for a in agreement.values()), agreement


def _copy_fixture(tmp_path, tensors=None, config=None):
    dst = tmp_path / "ckpt"
    dst.mkdir()
    hf = json.loads((FIXTURE / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config if config is not None else hf))
    if tensors is None:
        shutil.copy(FIXTURE / "model.safetensors", dst / "model.safetensors")
    else:
        save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_sharded_index_loads_the_same_tensors(tmp_path, imported):
    tensors = cw.read_safetensors(FIXTURE)
    dst = tmp_path / "sharded"
    dst.mkdir()
    shutil.copy(FIXTURE / "config.json", dst / "config.json")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(dst / file))
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg, model = cw.load_checkpoint(dst)
    assert cfg == imported[0]
    a, b = nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(imported[1]))
    np.testing.assert_array_equal(
        np.asarray(a["encoder"]["layers"][3]["fc2"]["kernel"]),
        np.asarray(b["encoder"]["layers"][3]["fc2"]["kernel"]),
    )


def test_bad_checkpoints_list_the_offending_keys(tmp_path):
    tensors = cw.read_safetensors(FIXTURE)
    missing = dict(tensors)
    del missing["model.encoder.layers.1.fc1.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['model.encoder.layers.1.fc1.bias'\]"):
        cw.load_checkpoint(_copy_fixture(tmp_path, missing))
    wrong = dict(tensors, **{"model.encoder.codebook.weight": np.zeros((65, 48), np.float32)})
    with pytest.raises(ValueError, match=r"wrong shapes.*codebook.weight: \(65, 48\)"):
        cw.convert_tensors(cw.config_from_hf(cw.read_hf_config(FIXTURE)), wrong)
    extra = dict(tensors, **{"model.encoder.layers.9.fc1.bias": np.zeros((96,), np.float32)})
    with pytest.raises(ValueError, match=r"unknown keys \['model.encoder.layers.9.fc1.bias'\]"):
        cw.convert_tensors(cw.config_from_hf(cw.read_hf_config(FIXTURE)), extra)
    no_ema = {k: v for k, v in tensors.items() if not k.endswith(("ema_count", "ema_weight"))}
    with pytest.raises(ValueError, match="ema_count"):
        cw.convert_tensors(cw.config_from_hf(cw.read_hf_config(FIXTURE)), no_ema)


def test_bad_configs():
    hf = cw.read_hf_config(FIXTURE)
    with pytest.raises(ValueError, match="GlmForCausalLM.*supported"):
        cw.config_from_hf(dict(hf, architectures=["GlmForCausalLM"]))
    with pytest.raises(ValueError, match=r"lacks \['pooling_type', 'quantize_position'\]"):
        cw.config_from_hf(
            {k: v for k, v in hf.items() if k not in ("pooling_type", "quantize_position")}
        )
    with pytest.raises(ValueError, match="quantize_causal_encoder"):
        cw.config_from_hf(dict(hf, quantize_causal_encoder=True))
    asr = cw.config_from_hf(dict(hf, architectures=[cw.VQ_ASR]))
    assert asr.num_decoder_layers == 2 and asr.quantize_position == 2
    defaults = cw.config_from_hf(
        {
            k: v
            for k, v in hf.items()
            if k not in ("quantize_loss_scale", "quantize_restart_interval")
        }
    )
    assert (defaults.vq_loss_scale, defaults.restart_interval) == (40.0, 100)  # project defaults
    causal = cw.config_from_hf(dict(hf, encoder_causal_attention=True))
    assert causal.attention_block_size == 1


# --- Stock Whisper against an independent numpy forward of the HF math -------------------------

D, N, F, M, V, P_SRC, P_TGT = 8, 2, 16, 16, 20, 16, 8


def _stock_tensors(rng):
    def w(*shape, s=0.3):
        return (rng.normal(size=shape) * s).astype(np.float32)

    t = {
        "model.encoder.conv1.weight": w(D, M, 3), "model.encoder.conv1.bias": w(D),
        "model.encoder.conv2.weight": w(D, D, 3), "model.encoder.conv2.bias": w(D),
        "model.encoder.embed_positions.weight": w(P_SRC, D),
        "model.decoder.embed_tokens.weight": w(V, D),
        "model.decoder.embed_positions.weight": w(P_TGT, D),
    }  # fmt: skip
    for prefix, attns in (("model.encoder.layers.0", ["self_attn"]),
                          ("model.decoder.layers.0", ["self_attn", "encoder_attn"])):  # fmt: skip
        for a in attns:
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                t[f"{prefix}.{a}.{proj}.weight"] = w(D, D)
                if proj != "k_proj":
                    t[f"{prefix}.{a}.{proj}.bias"] = w(D)
            t[f"{prefix}.{a}_layer_norm.weight"] = 1 + w(D, s=0.1)
            t[f"{prefix}.{a}_layer_norm.bias"] = w(D, s=0.1)
        t[f"{prefix}.fc1.weight"], t[f"{prefix}.fc1.bias"] = w(F, D), w(F)
        t[f"{prefix}.fc2.weight"], t[f"{prefix}.fc2.bias"] = w(D, F), w(D)
        t[f"{prefix}.final_layer_norm.weight"] = 1 + w(D, s=0.1)
        t[f"{prefix}.final_layer_norm.bias"] = w(D, s=0.1)
    for stack in ("encoder", "decoder"):
        t[f"model.{stack}.layer_norm.weight"] = 1 + w(D, s=0.1)
        t[f"model.{stack}.layer_norm.bias"] = w(D, s=0.1)
    t["proj_out.weight"] = t["model.decoder.embed_tokens.weight"].copy()
    return t


def _np_reference(t, mel, tokens):
    """HF WhisperForConditionalGeneration forward in numpy (channel-first convs, pre-LN)."""

    def gelu(x):
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * t[f"{name}.weight"] + t[f"{name}.bias"]

    def conv(x, name, stride):  # x (C, L), symmetric padding 1
        w, b = t[f"{name}.weight"], t[f"{name}.bias"]
        xp = np.pad(x, ((0, 0), (1, 1)))
        out_len = (xp.shape[1] - 3) // stride + 1
        cols = np.stack([xp[:, i * stride : i * stride + 3] for i in range(out_len)])  # (L, C, k)
        return np.einsum("lck,ock->ol", cols, w) + b[:, None]

    def attn(x, kv, name, causal):
        hd = D // N
        q = (x @ t[f"{name}.q_proj.weight"].T + t[f"{name}.q_proj.bias"]) * hd**-0.5
        k = kv @ t[f"{name}.k_proj.weight"].T
        v = kv @ t[f"{name}.v_proj.weight"].T + t[f"{name}.v_proj.bias"]
        q, k, v = (a.reshape(a.shape[0], N, hd).transpose(1, 0, 2) for a in (q, k, v))
        s = q @ k.transpose(0, 2, 1)
        if causal:
            s = np.where(np.tril(np.ones(s.shape[1:], bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        o = (p @ v).transpose(1, 0, 2).reshape(x.shape[0], D)
        return o @ t[f"{name}.out_proj.weight"].T + t[f"{name}.out_proj.bias"]

    def mlp(x, name):
        h = gelu(x @ t[f"{name}.fc1.weight"].T + t[f"{name}.fc1.bias"])
        return h @ t[f"{name}.fc2.weight"].T + t[f"{name}.fc2.bias"]

    e = "model.encoder"
    x = gelu(conv(gelu(conv(mel.T, f"{e}.conv1", 1)), f"{e}.conv2", 2)).T
    x = x + t[f"{e}.embed_positions.weight"][: x.shape[0]]
    h = ln(x, f"{e}.layers.0.self_attn_layer_norm")
    x = x + attn(h, h, f"{e}.layers.0.self_attn", False)
    x = x + mlp(ln(x, f"{e}.layers.0.final_layer_norm"), f"{e}.layers.0")
    enc = ln(x, f"{e}.layer_norm")
    d = "model.decoder"
    y = t[f"{d}.embed_tokens.weight"][tokens] + t[f"{d}.embed_positions.weight"][: len(tokens)]
    h = ln(y, f"{d}.layers.0.self_attn_layer_norm")
    y = y + attn(h, h, f"{d}.layers.0.self_attn", True)
    h = ln(y, f"{d}.layers.0.encoder_attn_layer_norm")
    y = y + attn(h, enc, f"{d}.layers.0.encoder_attn", False)
    y = y + mlp(ln(y, f"{d}.layers.0.final_layer_norm"), f"{d}.layers.0")
    return ln(y, f"{d}.layer_norm") @ t[f"{d}.embed_tokens.weight"].T


def test_stock_whisper_import_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    tensors = _stock_tensors(rng)
    config = {
        "architectures": [cw.STOCK], "d_model": D, "encoder_layers": 1, "decoder_layers": 1,
        "encoder_attention_heads": N, "decoder_attention_heads": N, "encoder_ffn_dim": F,
        "decoder_ffn_dim": F, "num_mel_bins": M, "max_source_positions": P_SRC,
        "max_target_positions": P_TGT, "vocab_size": V, "activation_function": "gelu",
        "scale_embedding": False,
    }  # fmt: skip
    cfg, model = cw.load_checkpoint(_copy_fixture(tmp_path, tensors, config))
    assert cfg.quantize_position is None and cfg.pooling_kernel == 1 and not cfg.use_causal_conv
    assert model.encoder.quantizer is None and model.decoder is not None
    mel = rng.normal(size=(12, M)).astype(np.float32)  # 12 frames -> 6 encoder frames
    tokens = np.array([3, 7, 1, 19, 0])
    forward = nnx.jit(lambda m, *args: m(*args))
    mask, token_mask = np.ones((1, 12), bool), np.ones((1, 5), bool)
    logits, enc = forward(model, mel[None], mask, tokens[None], token_mask)
    expected = _np_reference({k: v.astype(np.float64) for k, v in tensors.items()}, mel, tokens)
    assert enc.hidden.shape == (1, 6, D)
    np.testing.assert_allclose(np.asarray(logits[0]), expected, atol=1e-4, rtol=1e-4)
    # A proj_out that is not the tied embedding is rejected.
    tensors["proj_out.weight"] = tensors["proj_out.weight"] + 1
    with pytest.raises(ValueError, match="proj_out.weight differs"):
        cw.convert_tensors(cfg, tensors)


def test_long_audio_is_cut_into_30s_windows(imported, fixture_wavs):
    """65 s -> windows of 30, 30 and 5 s -> 375 + 375 + ceil(80000 / 1280) tokens."""
    long_wav = np.concatenate([fixture_wavs[3]] * 8)[: 65 * 16000]
    (tokens,) = speech_tokenization.tokenize_waveforms(imported[1], [long_wav])
    assert tokens.shape == (375 + 375 + 63,) and tokens.dtype == np.int32
    with pytest.raises(ValueError, match="empty"):
        speech_tokenization.tokenize_waveforms(imported[1], [np.zeros((0,), np.float32)])
