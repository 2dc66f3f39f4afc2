"""Decoder primitives against their definitions (decoder.md §2, §4, §11.3, §13.2, §13.4)."""

import numpy as np
import pytest
from flax import nnx

from glmvoice_jax.models.speech_decoder import VARIANTS, SpeechDecoder
from glmvoice_jax.models.speech_decoder.encoder import (
    TokenEncoder,
    block_causal_mask,
    rel_pos_table,
)
from glmvoice_jax.models.speech_decoder.flow import cosine_t_span
from glmvoice_jax.models.speech_decoder.hift import hann_window, istft, stft
from glmvoice_jax.models.speech_decoder.layers import (
    Conv1d,
    ConvTranspose1d,
    frames_from_tokens,
    nearest_indices,
)


@pytest.mark.parametrize(
    "n, t", [(1, 6), (25, 172), (40, 275), (2240, 15435), (3392, 23372), (3648, 25137)]
)
def test_frames_from_tokens_float32_rule(n, t):
    assert frames_from_tokens(n) == t


def test_frames_float64_would_differ():
    assert int(2240 / 12.5 * 22050 / 256) == 15434  # the f64 answer the f32 rule must avoid


def test_nearest_indices_follow_torch_float32_rule():
    idx = nearest_indices(40, 275)
    exact = (np.arange(275) * 40) // 275
    assert np.sum(idx != exact) == 3  # fixture README: 3 frames differ for 40 -> 275
    assert idx[0] == 0 and idx[-1] == 39 and np.all(np.diff(idx) >= 0)
    assert np.array_equal(nearest_indices(5, 5), np.arange(5))


def _conv_ref(x, w, b, stride, pad, dil):
    # torch Conv1d definition; x (T, C_in), w (C_out, C_in, K).
    xp = np.pad(x, ((pad, pad), (0, 0)))
    k = w.shape[2]
    t_out = (xp.shape[0] - dil * (k - 1) - 1) // stride + 1
    y = np.zeros((t_out, w.shape[0]))
    for t in range(t_out):
        for j in range(k):
            y[t] += w[:, :, j] @ xp[t * stride + j * dil]
    return y + b


def _conv_t_ref(x, w, b, stride, pad):
    # torch ConvTranspose1d definition; x (L, C_in), w (C_in, C_out, K).
    k = w.shape[2]
    full = np.zeros(((x.shape[0] - 1) * stride + k, w.shape[1]))
    for n in range(x.shape[0]):
        for j in range(k):
            full[n * stride + j] += x[n] @ w[:, :, j]
    return full[pad : full.shape[0] - pad] + b


@pytest.mark.parametrize(
    "k, stride, pad, dil", [(3, 1, 1, 1), (5, 1, 6, 3), (3, 2, 1, 1), (16, 8, 4, 1)]
)
def test_conv1d_matches_torch_definition(k, stride, pad, dil):
    rng = np.random.default_rng(0)
    conv = Conv1d(3, 4, k, stride=stride, padding=pad, dilation=dil, rngs=nnx.Rngs(0))
    w = rng.normal(size=(4, 3, k)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    conv.kernel[...] = w.transpose(2, 1, 0)
    conv.bias[...] = b
    x = rng.normal(size=(1, 21, 3)).astype(np.float32)
    np.testing.assert_allclose(conv(x)[0], _conv_ref(x[0], w, b, stride, pad, dil), atol=1e-5)


@pytest.mark.parametrize("k, stride, pad", [(4, 2, 1), (16, 8, 4)])
def test_conv_transpose_matches_torch_definition(k, stride, pad):
    rng = np.random.default_rng(1)
    conv = ConvTranspose1d(3, 5, k, stride=stride, padding=pad, rngs=nnx.Rngs(0))
    w = rng.normal(size=(3, 5, k)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    conv.kernel[...] = w.transpose(2, 0, 1)
    conv.bias[...] = b
    x = rng.normal(size=(1, 7, 3)).astype(np.float32)
    y = conv(x)[0]
    assert y.shape == ((7 - 1) * stride - 2 * pad + k, 5)
    np.testing.assert_allclose(y, _conv_t_ref(x[0], w, b, stride, pad), atol=1e-5)


def test_stft_matches_numpy_and_istft_inverts_it():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 256)).astype(np.float32)
    spec = np.asarray(stft(x, 16, 4))  # (1, F, 18)
    assert spec.shape == (1, 65, 18)
    xp = np.pad(x[0].astype(np.float64), 8, mode="reflect")
    frames = np.stack([xp[4 * f : 4 * f + 16] for f in range(65)]) * hann_window(16)
    ref = np.fft.rfft(frames, axis=-1)
    np.testing.assert_allclose(spec[0, :, :9], ref.real, atol=1e-5)
    np.testing.assert_allclose(spec[0, :, 9:], ref.imag, atol=1e-5)
    z = spec[..., :9] + 1j * spec[..., 9:]
    y = np.asarray(istft(np.abs(z).astype(np.float32), np.angle(z).astype(np.float32), 16, 4))
    assert y.shape == (1, 256)
    np.testing.assert_allclose(y, x, atol=1e-5)


def test_rel_pos_table_and_block_mask():
    pe = rel_pos_table(3, 4)  # rows: r = 2, 1, 0, -1, -2
    np.testing.assert_allclose(pe[2], [0, 1, 0, 1])
    np.testing.assert_allclose(pe[0, 0], np.sin(2.0), rtol=1e-6)
    np.testing.assert_allclose(pe[4, 0], np.sin(-2.0), rtol=1e-6)
    np.testing.assert_allclose(pe[1, 3], np.cos(np.exp(-2 * np.log(1e4) / 4)), rtol=1e-6)
    m = block_causal_mask(6, 4)
    assert m[0].tolist() == [1, 1, 1, 1, 0, 0] and m[4].tolist() == [1] * 6
    assert m[5, 5] and not m[3, 4]


def test_cosine_t_span():
    want = [0, 0.0123116, 0.0489435, 0.1089935, 0.1909830, 0.2928932]
    np.testing.assert_allclose(cosine_t_span(10)[:6], want, atol=1e-6)
    assert cosine_t_span(10)[-1] == 1.0


def test_encoder_completed_blocks_ignore_later_tokens():
    cfg = VARIANTS["tiny"].flow
    enc = TokenEncoder(32, 32, 2, 48, 2, 4, rngs=nnx.Rngs(0))
    x = np.random.default_rng(3).normal(size=(1, 11, 32)).astype(np.float32)
    valid = np.ones((1, 11), bool)
    y = np.asarray(enc(x, valid))
    x2 = x.copy()
    x2[0, 9] += 1.0  # a token of the third (partial) block
    y2 = np.asarray(enc(x2, valid))
    np.testing.assert_allclose(y2[0, :8], y[0, :8], atol=1e-6)  # blocks 0-1 unchanged
    assert np.abs(y2[0, 8:] - y[0, 8:]).max() > 1e-3  # its own block sees it
    assert cfg.encoder_block_size == 4


@pytest.mark.parametrize("preset, mesh_shape", [("fsdp", (1, 8, 1)), ("fsdp_tp", (2, 2, 2))])
def test_parameters_shard_evenly_on_the_fake_mesh(preset, mesh_shape):
    import jax

    from glmvoice_jax import sharding
    from glmvoice_jax.convert.decoder.decoder_pt import _FixedKeyRngs

    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape)))
    for name in ("tiny", "glm4_voice_decoder"):
        with sharding.activate(mesh, preset):
            model = nnx.eval_shape(lambda n=name: SpeechDecoder(VARIANTS[n], rngs=_FixedKeyRngs()))
            specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
        shapes = nnx.state(model, nnx.Param)
        leaves = jax.tree.leaves(shapes, is_leaf=lambda v: isinstance(v, nnx.Variable))
        spec_leaves = jax.tree.leaves(specs, is_leaf=lambda v: isinstance(v, nnx.Variable))
        assert len(leaves) == len(spec_leaves) > 0
        sharded = 0
        for var, spec in zip(leaves, spec_leaves):
            shape = var.get_value().shape
            pspec = spec.get_value()
            assert len(pspec) <= len(shape)
            for dim, axes in zip(shape, pspec):
                axes = (axes,) if isinstance(axes, str) else (axes or ())
                parts = int(np.prod([mesh.shape[a] for a in axes]))
                assert dim % parts == 0, (name, shape, pspec)
                sharded += parts > 1
        assert sharded > 0


def test_nsf_phase_cumsum_matches_a_float64_accumulator():
    import jax

    from glmvoice_jax.models.speech_decoder.hift import repeated_cumsum

    # Speech-like f0 over 10 s with unvoiced frames: a float32 scan drifts by ~3e-3 here.
    rng = np.random.default_rng(0)
    f0 = (150 + 50 * np.sin(np.arange(860) / 20) + rng.normal(size=860)).astype(np.float32)
    f0[::7] = 0
    inc = (f0[None, :, None] * np.arange(1, 10, dtype=np.float32)) / np.float32(22050)
    ours = np.asarray(jax.jit(repeated_cumsum, static_argnums=1)(inc, 256))
    ref = np.cumsum(np.repeat(inc, 256, axis=1).astype(np.float64), axis=1).astype(np.float32)
    assert ours.shape == ref.shape == (1, 860 * 256, 9)
    assert np.all(np.abs(ours - ref) <= np.spacing(np.abs(ref)))  # ≤ 1 ulp
