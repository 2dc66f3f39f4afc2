"""GLM-4 interop: HF (chatglm / transformers) -> Orbax import, scoring parity, export round trip."""

import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from glmvoice_jax import checkpoint, sharding
from glmvoice_jax.convert.glm import chatglm, glm_weights, hf_glm
from glmvoice_jax.convert.io import orbax_stream, safetensors_dir
from glmvoice_jax.inference import scoring

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "fixtures")
FORMATS = {
    "glm_chatglm": chatglm.FORMAT,
    "glm_chatglm_sharded": chatglm.FORMAT,
    "glm_hf": hf_glm.FORMAT,
}
TOL = 1e-4  # fixed (fixtures/README.md); never loosened


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Each fixture folder imported once: {folder: checkpoint root}."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name, fmt in FORMATS.items():
        out[name] = str(root / name)
        glm_weights.import_glm(os.path.join(FIXTURES, name), out[name], fmt)
    return out


def _tensors(directory):
    return dict(safetensors_dir.iter_tensors(directory))


def _assert_bit_equal(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_import_then_score_matches_reference(imported, tmp_path, name):
    out = tmp_path / "out.jsonl"
    stats = scoring.score_file(imported[name], os.path.join(FIXTURES, name, "inputs.jsonl"), out)
    expected = [
        json.loads(x)
        for x in pathlib.Path(os.path.join(FIXTURES, name, "expected.jsonl"))
        .read_text()
        .splitlines()
    ]
    got = [json.loads(x) for x in pathlib.Path(out).read_text().splitlines()]
    assert stats["sequences"] == len(expected)
    assert [g["id"] for g in got] == [e["id"] for e in expected]
    worst = 0.0
    for e, g in zip(expected, got):
        assert len(g["token_logprobs"]) == len(e["token_logprobs"])
        if e["token_logprobs"]:
            d = np.abs(np.array(g["token_logprobs"]) - np.array(e["token_logprobs"]))
            worst = max(worst, float(d.max()))
        assert g["logprob"] == pytest.approx(
            e["logprob"], abs=TOL * max(1, len(g["token_logprobs"]))
        )
    assert worst < TOL, f"max |d token logprob| = {worst}"


def test_import_meta_and_tree(imported):
    meta = checkpoint.read_meta(imported["glm_chatglm"])
    cfg = checkpoint.model_config_from_meta(meta)
    assert (cfg.num_layers, cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads) == (
        2,
        64,
        112,
        4,
        2,
    )
    assert (cfg.head_dim, cfg.vocab_size, cfg.norm_eps, cfg.param_dtype) == (
        16,
        640,
        1.5625e-07,
        "float32",
    )
    assert meta["token_layout"]["vocab_size"] == 640
    assert meta["extra"]["source"]["format"] == "chatglm"
    # The hf fixture: rope_theta 10000 -> rope_ratio 1, partial_rotary_factor -> rotary_fraction.
    hf_cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(imported["glm_hf"]))
    assert (hf_cfg.rope_ratio, hf_cfg.rotary_fraction) == (1.0, 0.5)


def test_restore_onto_another_mesh_matches_source(imported):
    """Leaves restore onto a 2-device mesh and equal the split / transposed HF tensors."""
    meta = checkpoint.read_meta(imported["glm_chatglm"])
    cfg = checkpoint.model_config_from_meta(meta)
    mesh = sharding.make_mesh({"fsdp": 2}, jax.devices()[:2])
    abstract, shardings = glm_weights.abstract_params(cfg, mesh)
    params = checkpoint.restore_params(
        imported["glm_chatglm"], checkpoint.abstract_like(abstract, shardings)
    )
    src = _tensors(os.path.join(FIXTURES, "glm_chatglm"))
    qkv = src["transformer.encoder.layers.1.self_attention.query_key_value.weight"]  # (N+2K)H, D
    k = np.asarray(params["layers"]["attn"]["k"]["kernel"])[1]  # D, K, H
    np.testing.assert_array_equal(k, qkv[64:96].T.reshape(64, 2, 16))
    up = src["transformer.encoder.layers.0.mlp.dense_h_to_4h.weight"][112:]
    np.testing.assert_array_equal(np.asarray(params["layers"]["mlp"]["up"]["kernel"])[0], up.T)
    head = np.asarray(params["head"]["kernel"])
    np.testing.assert_array_equal(head, src["transformer.output_layer.weight"].T)
    assert params["embed"]["embedding"].sharding.mesh.devices.size == 2


@pytest.mark.parametrize("name", ["glm_chatglm", "glm_hf"])
def test_export_round_trip_is_bit_exact(imported, tmp_path, name):
    fmt = FORMATS[name]
    dst = tmp_path / "hf"
    files = glm_weights.export_glm(imported[name], str(dst), fmt)
    assert "model.safetensors" in files and "config.json" in files
    _assert_bit_equal(_tensors(os.path.join(FIXTURES, name)), _tensors(dst))
    original = json.loads(pathlib.Path(os.path.join(FIXTURES, name, "config.json")).read_text())
    assert json.loads(pathlib.Path(dst / "config.json").read_text()) == original


def test_inv_freq_is_recreated_as_the_reference_defines_it():
    src = _tensors(os.path.join(FIXTURES, "glm_chatglm"))["transformer.rotary_pos_emb.inv_freq"]
    mine = chatglm.inv_freq(16, "float32")
    assert mine.dtype == np.float32 and mine.tobytes() == src.tobytes()
    assert chatglm.inv_freq(128, "bfloat16").shape == (32,)


def test_cross_layout_and_sharded_export(imported, tmp_path):
    """chatglm -> transformers -> (import) -> chatglm in 3 shards gives back the same tensors."""
    hf_dir, ck2, back = tmp_path / "as_hf", tmp_path / "ck2", tmp_path / "back"
    glm_weights.export_glm(imported["glm_chatglm"], str(hf_dir), hf_glm.FORMAT)
    assert json.loads(pathlib.Path(hf_dir / "config.json").read_text())["architectures"] == [
        "GlmForCausalLM"
    ]
    glm_weights.import_glm(str(hf_dir), str(ck2), hf_glm.FORMAT)
    files = glm_weights.export_glm(str(ck2), str(back), chatglm.FORMAT, max_shard_bytes=250_000)
    shards = [f for f in files if f.endswith(".safetensors")]
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads(pathlib.Path(back / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    _assert_bit_equal(_tensors(os.path.join(FIXTURES, "glm_chatglm")), _tensors(back))


def test_param_dtype_bfloat16(tmp_path):
    dst = tmp_path / "bf16"
    glm_weights.import_glm(
        os.path.join(FIXTURES, "glm_hf"), str(dst), hf_glm.FORMAT, param_dtype="bfloat16"
    )
    assert checkpoint.read_meta(str(dst))["model"]["param_dtype"] == "bfloat16"
    reader = orbax_stream.ParamsReader(str(dst / "0"))
    assert reader.dtype("head.kernel") == np.dtype("bfloat16")
    out = tmp_path / "out"
    glm_weights.export_glm(str(dst), str(out), hf_glm.FORMAT, dtype="bfloat16")
    got = _tensors(out)["lm_head.weight"]
    want = _tensors(os.path.join(FIXTURES, "glm_hf"))["lm_head.weight"].astype(got.dtype)
    assert got.tobytes() == want.tobytes()


# ----------------------------------------------------------------------------- bad inputs


def _copy_fixture(tmp_path, name="glm_chatglm"):
    dst = tmp_path / "src"
    shutil.copytree(os.path.join(FIXTURES, name), dst)
    os.chmod(dst, 0o755)
    for f in dst.iterdir():
        os.chmod(f, 0o644)
    return dst


def _edit_config(src, **changes):
    cfg = json.loads(pathlib.Path(src / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (src / "config.json").write_text(json.dumps(cfg))


def _rewrite_weights(src, edit):
    tensors = _tensors(src)
    edit(tensors)
    save_file(tensors, str(src / "model.safetensors"))


def _layer0(name):
    return f"transformer.encoder.layers.0.{name}"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(architectures=["LlamaForCausalLM"]), "architectures"),
        (dict(kv_channels=None), "'kv_channels' is missing"),
        (dict(rmsnorm=False), "rmsnorm = False is not supported"),
        (dict(torch_dtype="int8"), "torch_dtype"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, change, message):
    src = _copy_fixture(tmp_path)
    _edit_config(src, **change)
    with pytest.raises((KeyError, ValueError), match=message) as e:
        glm_weights.import_glm(str(src), str(tmp_path / "ck"), chatglm.FORMAT)
    assert "config.json" in str(e.value)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.pop(_layer0("mlp.dense_4h_to_h.weight")),
            r"dense_4h_to_h.weight.*\[64, 112\]",
        ),
        (
            lambda t: t.update({_layer0("input_layernorm.weight"): np.ones(65, np.float32)}),
            r"input_layernorm.weight.*shape \[65\], expected \[64\]",
        ),
        (
            lambda t: t.update({_layer0("input_layernorm.weight"): np.ones(64, np.float16)}),
            r"input_layernorm.weight.*dtype float16, expected float32",
        ),
        (lambda t: t.update({"transformer.extra.weight": np.ones(2, np.float32)}), "extra.weight"),
    ],
)
def test_bad_tensors_name_the_tensor(tmp_path, edit, message):
    src = _copy_fixture(tmp_path)
    _rewrite_weights(src, edit)
    with pytest.raises((KeyError, ValueError), match=message):
        glm_weights.import_glm(str(src), str(tmp_path / "ck"), chatglm.FORMAT)
    assert not (tmp_path / "ck").exists()


def test_missing_shard_is_named(tmp_path):
    src = _copy_fixture(tmp_path, "glm_chatglm_sharded")
    os.remove(src / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        glm_weights.import_glm(str(src), str(tmp_path / "ck"), chatglm.FORMAT)


def test_interrupted_import_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of the tensors

    real = glm_weights._import_entry
    monkeypatch.setattr(glm_weights, "_import_entry", lambda *a, **k: (boom(), real(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        glm_weights.import_glm(
            os.path.join(FIXTURES, "glm_chatglm"), str(tmp_path / "ck"), chatglm.FORMAT
        )
    assert os.listdir(tmp_path) == []


def test_existing_dst_is_refused(imported, tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        glm_weights.import_glm(
            os.path.join(FIXTURES, "glm_hf"), str(tmp_path / "ck"), hf_glm.FORMAT
        )
    with pytest.raises(FileExistsError, match="already exists"):
        glm_weights.export_glm(imported["glm_hf"], str(tmp_path / "ck"), hf_glm.FORMAT)
