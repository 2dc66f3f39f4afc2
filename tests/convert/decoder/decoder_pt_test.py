"""Decoder import: safe config.yaml parsing, weight-norm folding, the rename table, coverage."""

import dataclasses
import os
import pathlib
import shutil

import numpy as np
import pytest

from glmvoice_jax.convert.decoder import decoder_pt
from glmvoice_jax.convert.io.torch_zip import load_state_dict
from glmvoice_jax.models.speech_decoder import VARIANTS

FIXTURES = pathlib.Path(os.path.dirname(__file__)).parents[1] / "fixtures" / "decoder"
TINY_YAML = (FIXTURES / "config.yaml").read_text()


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def test_fixture_config_is_the_tiny_preset():
    assert decoder_pt.load_config(FIXTURES / "config.yaml") == VARIANTS["tiny"]


def test_release_dims_give_the_release_preset():
    # The fixture has the release structure; put the release numbers back (decoder.md §1).
    text = TINY_YAML
    for old, new in [
        ("    input_size: 32\n    output_size: 80", "    input_size: 512\n    output_size: 80"),
        ("vocab_size: 64", "vocab_size: 16384"),
        (
            "output_size: 32\n        attention_heads: 2\n        linear_units: 48\n"
            "        num_blocks: 2",
            "output_size: 512\n        attention_heads: 8\n        linear_units: 2048\n"
            "        num_blocks: 6",
        ),
        ("block_size: 4", "block_size: 10"),
        ("        input_size: 32\n        use_cnn", "        input_size: 512\n        use_cnn"),
        ("sampling_ratios: [1, 1]", "sampling_ratios: [1, 1, 1, 1]"),
        ("channels: [32, 32]", "channels: [256, 256]"),
        ("attention_head_dim: 8", "attention_head_dim: 64"),
        ("    n_blocks: 1", "    n_blocks: 4"),
        ("num_mid_blocks: 2", "num_mid_blocks: 12"),
        ("num_heads: 2", "num_heads: 8"),
        ("base_channels: 32", "base_channels: 512"),
        ("nb_harmonics: 2", "nb_harmonics: 8"),
        ("    resblock_kernel_sizes: [3, 5]", "    resblock_kernel_sizes: [3, 7, 11]"),
        (
            "    resblock_dilation_sizes: [[1, 3], [1, 3]]",
            "    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]",
        ),
        ("source_resblock_kernel_sizes: [5, 3]", "source_resblock_kernel_sizes: [7, 11]"),
        (
            "source_resblock_dilation_sizes: [[1, 3], [1]]",
            "source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5]]",
        ),
        ("cond_channels: 24", "cond_channels: 512"),
    ]:
        text = _edit(text, old, new)
    config = decoder_pt.parse_config_yaml(text)
    assert config == VARIANTS["glm4_voice_decoder"]
    # decoder.md §10: 1,185 flow tensors; hift 227 tensors = 170 after folding 57 (g, v) pairs.
    table = decoder_pt.rename_table(config)
    assert sum(src.startswith("flow.") for src, _, _ in table) == 1185
    assert sum(src.startswith("hift.") for src, _, _ in table) == 170
    assert len({dst for _, dst, _ in table}) == len(table)


def test_yaml_tags_are_data_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = _edit(
        TINY_YAML,
        "__set_seed1: !apply:random.seed [1986]",
        f"__set_seed1: !apply:os.system ['touch {marker}']\n"
        f"__extra_seed: !name:subprocess.call ['touch {marker}']".replace("__extra", "__set_seed9"),
    )
    assert decoder_pt.parse_config_yaml(text) == VARIANTS["tiny"]
    assert not marker.exists()


def test_yaml_python_tags_are_not_constructed():
    text = TINY_YAML + "\nhack: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(ValueError, match="not valid YAML"):
        decoder_pt.parse_config_yaml(text)


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "        block_size: 4",
            "        block_size: 4\n        shiny: 3",
            r"flow.encoder: unknown field\(s\) \['shiny'\]",
        ),
        ("    nb_harmonics: 2\n", "", r"hift: missing field 'nb_harmonics'"),
        (
            "'rel_pos_espnet'\n        selfattention_layer_type: 'block",
            "'abs_pos'\n        selfattention_layer_type: 'block",
            r"pos_enc_layer_type = 'abs_pos' is not supported",
        ),
        (
            "!new:cosyvoice.hifigan.generator.HiFTGenerator",
            "!new:cosyvoice.hifigan.generator.HiFiGAN",
            r"hift: expected !new:cosyvoice.hifigan.generator.HiFTGenerator, got "
            r"!new:cosyvoice.hifigan.generator.HiFiGAN",
        ),
        (
            "sampling_rate: !ref <sample_rate>",
            "sampling_rate: !ref <sample_rate> * 2",
            r"unsupported !ref",
        ),
        (
            "    out_channels: 80\n            channels",
            "    out_channels: 16\n            channels",
            r"estimator.out_channels != mels",
        ),
        (
            "spk_embed_dim: 192\n\n",
            "spk_embed_dim: 192\nnew_top: 1\n\n",
            r"unknown top-level field\(s\) \['new_top'\]",
        ),
        ("channels: [32, 32]", "channels: [32, 36]", r"multiples of 8"),
    ],
)
def test_bad_configs_are_explained(old, new, message):
    with pytest.raises(ValueError, match=message):
        decoder_pt.parse_config_yaml(_edit(TINY_YAML, old, new))


def test_weight_norm_fold_matches_definition_and_both_key_styles():
    hift = load_state_dict(FIXTURES / "hift.pt")
    folded = decoder_pt.fold_weight_norm(hift)
    assert "ups.0.weight" in folded and "ups.0.weight_g" not in folded
    for name in ("conv_pre", "ups.0", "resblocks.1.convs1.0"):
        g, v, w = hift[f"{name}.weight_g"], hift[f"{name}.weight_v"], folded[f"{name}.weight"]
        # ‖W‖ over all axes but 0 equals |g|, and W ∥ v (axis 0 = C_in for ConvTranspose).
        norms = np.sqrt((w.astype(np.float64) ** 2).sum(axis=(1, 2)))
        np.testing.assert_allclose(norms, np.abs(g.ravel()), rtol=1e-6)
        ref = g * v / np.sqrt((v**2).sum(axis=(1, 2), keepdims=True))
        np.testing.assert_allclose(w, ref, rtol=1e-6, atol=1e-7)
    new_style = {}
    for k, v in hift.items():
        k = k.replace(".weight_g", ".parametrizations.weight.original0")
        new_style[k.replace(".weight_v", ".parametrizations.weight.original1")] = v
    folded_new = decoder_pt.fold_weight_norm(new_style)
    assert folded_new.keys() == folded.keys()
    for k in folded:
        np.testing.assert_array_equal(folded_new[k], folded[k])
    with pytest.raises(ValueError, match=r"g without v .* \['conv_pre'\]"):
        decoder_pt.fold_weight_norm({"conv_pre.weight_g": hift["conv_pre.weight_g"]})


def test_key_coverage_errors_list_the_keys():
    cfg = VARIANTS["tiny"]
    flow = load_state_dict(FIXTURES / "flow.pt")
    hift = load_state_dict(FIXTURES / "hift.pt")
    params = decoder_pt.convert_state_dicts(cfg, flow, hift)
    assert len(params) == 227 + 123 - 31  # 31 weight-normed convs: (g, v) → one weight
    extra = dict(flow, **{"decoder.estimator.bonus.weight": np.zeros(3, np.float32)})
    del extra["encoder.after_norm.bias"]
    with pytest.raises(ValueError) as err:
        decoder_pt.convert_state_dicts(cfg, extra, hift)
    assert "unknown key(s) ['flow.decoder.estimator.bonus.weight']" in str(err.value)
    assert "missing key(s) ['flow.encoder.after_norm.bias']" in str(err.value)


def test_shape_mismatch_is_reported():
    cfg = VARIANTS["tiny"]
    params = decoder_pt.convert_state_dicts(
        cfg, load_state_dict(FIXTURES / "flow.pt"), load_state_dict(FIXTURES / "hift.pt")
    )
    wider = dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, encoder_linear_units=64))
    with pytest.raises(
        ValueError,
        match=r"flow/encoder/layers/0/w_1/kernel: checkpoint \(32, 48\) vs model \(32, 64\)",
    ):
        decoder_pt.build_decoder(wider, params)


def test_load_decoder_places_every_tensor(tmp_path):
    model = decoder_pt.load_decoder(FIXTURES)
    flow = load_state_dict(FIXTURES / "flow.pt")
    hift = decoder_pt.fold_weight_norm(load_state_dict(FIXTURES / "hift.pt"))
    est = model.flow.estimator
    np.testing.assert_array_equal(
        est.up_blocks[0].sample.kernel[...],
        flow["decoder.estimator.up_blocks.0.2.conv.weight"].transpose(2, 0, 1),
    )
    np.testing.assert_array_equal(
        model.flow.encoder.layers[1].self_attn.pos_bias_v[...],
        flow["encoder.encoders.1.self_attn.pos_bias_v"],
    )
    np.testing.assert_array_equal(
        model.hift.ups[1].kernel[...], hift["ups.1.weight"].transpose(2, 0, 1)
    )
    np.testing.assert_array_equal(
        model.hift.conv_post.kernel[...], hift["conv_post.weight"].transpose(2, 1, 0)
    )
    shutil.copy(FIXTURES / "config.yaml", tmp_path / "config.yaml")
    shutil.copy(FIXTURES / "flow.pt", tmp_path / "flow.pt")
    with pytest.raises(FileNotFoundError, match="hift.pt is missing"):
        decoder_pt.load_decoder(tmp_path)
