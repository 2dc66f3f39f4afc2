"""WhisperVQ: shapes, block-causal masks, pooling/VQ placement, stock Whisper, presets, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glmvoice_jax import sharding
from glmvoice_jax.models import whisper_layers as wl
from glmvoice_jax.models import whisper_vq
from glmvoice_jax.models.whisper_vq import VARIANTS, WhisperVQ, WhisperVQConfig

TINY = VARIANTS["tiny"]
STOCK_TINY = dataclasses.replace(
    TINY, use_causal_conv=False, attention_block_size=None, pooling_kernel=1,
    pooling_position=None, quantize_position=None,
)  # fmt: skip


def _model(cfg, seed=0):
    """Random-weight model without eager init (each eager init op compiles: seconds here)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), leaf.dtype)
        return jnp.asarray(np.zeros(leaf.shape, leaf.dtype))

    nnx.replace_by_pure_dict(state, jax.tree.map(draw, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def _mel(b, length, seed=0):
    # numpy inputs: every eager jnp op compiles once, which costs seconds on a busy 2-core box
    return np.random.default_rng(seed).normal(size=(b, length, TINY.num_mels)).astype(np.float32)


@nnx.jit
def _hidden(model, mel, mask):
    # One jitted function for the module: calls with the same model and shapes reuse one compile.
    return model.encoder(mel, mask).hidden


def test_tiny_shapes_and_token_path():
    model = _model(TINY)
    b, length, u = 2, 161, 5  # odd length: conv2 gives ceil(161 / 2) = 81 frames
    mel = _mel(b, length)
    mel_mask = np.arange(length)[None, :] < np.array([[161], [90]])
    tokens = np.ones((b, u), np.int32)
    token_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)

    @nnx.jit
    def run(m, mel, mel_mask, tokens, token_mask):
        logits, enc = m(mel, mel_mask, tokens, token_mask)
        ids, tmask = m.encode_tokens(mel, mel_mask)
        return logits, enc, ids, tmask

    logits, enc, ids, tmask = run(model, mel, mel_mask, tokens, token_mask)
    frames = -(-81 // 4)  # pooled 12.5 Hz frames
    assert logits.shape == (b, u, TINY.vocab_size) and logits.dtype == jnp.float32
    assert enc.hidden.shape == (b, frames, TINY.embed_dim)
    assert enc.ids.shape == ids.shape == (b, frames) and ids.dtype == jnp.int32
    # mask[::2][::4]: 90 valid mel frames -> 45 -> 12 tokens.
    np.testing.assert_array_equal(np.asarray(tmask).sum(1), [frames, 12])
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(enc.ids))
    assert np.all((np.asarray(ids) >= 0) & (np.asarray(ids) < TINY.codebook_size))
    assert np.all(np.isfinite(np.asarray(logits)))


def test_block_causal_mask_semantics():
    key_mask = jnp.array([[1, 1, 1, 1, 1, 1, 1, 0]], bool)
    allowed = np.asarray(wl.block_causal_mask(key_mask, 3))[0].astype(int)
    expected = np.zeros((8, 8), int)
    for i in range(8):
        for j in range(8):
            expected[i, j] = int(j < 3 * (i // 3 + 1) and j != 7)  # j <= i or same block
    np.testing.assert_array_equal(allowed, expected)
    assert allowed[0, 2] == 1 and allowed[2, 3] == 0 and allowed[3, 5] == 1  # inside/across
    causal = np.asarray(wl.block_causal_mask(jnp.ones((1, 5), bool), 1))[0]
    np.testing.assert_array_equal(causal, np.tril(np.ones((5, 5), bool)))
    full = np.asarray(wl.block_causal_mask(key_mask, None))[0]
    np.testing.assert_array_equal(full, np.broadcast_to(np.asarray(key_mask[0]), (8, 8)))


def test_encoder_is_block_causal_before_and_after_pooling():
    """Perturbing a late mel frame leaves earlier blocks bit-identical (50 Hz block 50 frames,
    pooled block 12 frames), and changes its own pooled block. No VQ here: the discrete codes
    would hide small changes."""
    cfg = dataclasses.replace(
        TINY, num_layers=2, pooling_position=1, quantize_position=None, num_decoder_layers=0
    )
    model = _model(cfg, seed=1)
    length = 480  # 240 frames at 50 Hz, 60 pooled frames
    mel = _mel(1, length, seed=2)
    mask = np.ones((1, length), bool)
    perturbed = mel.copy()
    perturbed[:, 300] += 100.0  # 50 Hz frame 150 (block 3), pooled frame 37
    h0, h1 = np.asarray(_hidden(model, mel, mask)), np.asarray(_hidden(model, perturbed, mask))
    np.testing.assert_array_equal(h0[:, :36], h1[:, :36])  # pooled blocks 0-2
    assert np.abs(h0[:, 36] - h1[:, 36]).max() > 0  # same pooled block [36, 48)
    # Padding keys are ignored: garbage in masked frames changes no valid output.
    short = np.arange(length)[None, :] < 400
    garbage = mel.copy()
    garbage[:, 400:] = 9.0
    g0 = np.asarray(_hidden(model, mel, short))
    g1 = np.asarray(_hidden(model, garbage, short))
    np.testing.assert_array_equal(g0[:, :50], g1[:, :50])  # valid pooled frames: 400 / 8


def test_stock_whisper_is_the_same_module_with_other_settings():
    stock = VARIANTS["whisper_large_v3"]
    assert not stock.use_causal_conv and stock.attention_block_size is None
    assert stock.pooling_kernel == 1 and stock.quantize_position is None
    assert stock.bitrate_bps is None
    cfg = dataclasses.replace(STOCK_TINY, num_layers=2, num_decoder_layers=0)
    model = _model(cfg)
    assert model.encoder.quantizer is None and model.encoder.embed_positions2 is None
    length = 96
    mel = _mel(1, length, seed=3)
    mask = np.ones((1, length), bool)
    late = mel.copy()
    late[:, -1] += 100.0
    h0 = np.asarray(_hidden(model, mel, mask))
    h1 = np.asarray(_hidden(model, late, mask))
    assert h0.shape == (1, length // 2, TINY.embed_dim)  # no pooling
    assert np.abs(h0[:, 0] - h1[:, 0]).max() > 0  # bidirectional: the future is seen
    with pytest.raises(ValueError, match="quantizer"):
        model.encode_tokens(mel, mask)


def test_bitrate_presets():
    expected = {
        "glm4_voice_tokenizer_50hz": (600, 50, 320, 4096),
        "glm4_voice_tokenizer_25hz": (300, 25, 640, 4096),
        "glm4_voice_tokenizer": (175, 12.5, 1280, 16384),
        "glm4_voice_tokenizer_6p25hz": (100, 6.25, 2560, 65536),
    }
    for name, (bps, hz, samples, codes) in expected.items():
        cfg = VARIANTS[name]
        assert cfg.bitrate_bps == pytest.approx(bps), name
        assert cfg.token_rate_hz == hz and cfg.samples_per_token == samples, name
        assert cfg.codebook_size == codes and cfg.embed_dim == 1280, name
        assert cfg.attention_block_size == 200 and cfg.quantize_position == 16, name


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(pooling_position=5), "pooling_position"),
        (dict(quantize_position=1), "must be >= pooling_position"),
        (dict(quantize_position=9), "quantize_position"),
        (dict(attention_block_size=2), "attention_block_size"),
        (dict(num_heads=3), "divisible"),
        (dict(pooling_type="median"), "pooling_type"),
        (dict(ema_decay=1.5), "ema_decay"),
        (dict(dtype="float99"), "dtype"),
    ],
)
def test_config_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


def test_config_dict_roundtrip_rejects_unknown_fields():
    assert WhisperVQConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown"):
        WhisperVQConfig.from_dict({**TINY.to_dict(), "bogus": 1})


def test_released_tokenizer_size_and_logical_axes():
    """Shape-only build of the 12.5 Hz preset: 343.6 M params up to the quantizer (glm4voice §1),
    and every logical axis name is in the sharding rules table."""
    cfg = VARIANTS["glm4_voice_tokenizer"]
    abstract = nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(abstract))
    truncated = 0
    known = {name for name, _ in sharding.rules("fsdp_tp")}
    for path, var in flat:
        names = var.get_metadata().get("out_sharding") or ()
        assert set(n for n in names if n is not None) <= known, (path, names)
        if path[0] != "encoder" or path[1] in ("layer_norm",) or path[-1] in ("ema_count",):
            continue
        if path[-1] in ("ema_weight", "ema_steps") or (path[1] == "layers" and path[2] >= 16):
            continue
        truncated += int(np.prod(var.get_value().shape))
    assert truncated == 343_599_360


def test_jit_grad_step_on_fake_mesh():
    cfg = dataclasses.replace(
        TINY, num_layers=2, pooling_position=1, quantize_position=1, num_decoder_layers=1,
        restart_interval=1,
    )  # fmt: skip
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    b, length, u = 8, 64, 4
    mel = _mel(b, length)
    mel_mask = np.arange(length)[None, :] < np.arange(40, 40 + 3 * b, 3)[:, None]
    tokens = np.ones((b, u), np.int32)
    token_mask = np.ones((b, u), bool)
    with sharding.activate(mesh, "fsdp"):
        model = _model(cfg)
        model.encoder.quantizer.ema_count[...] = np.full((cfg.codebook_size,), 0.5, np.float32)

        @nnx.jit
        def step(model, mel, mel_mask, key):
            def loss_fn(m):
                logits, enc = m(mel, mel_mask, tokens, token_mask, train=True, restart_key=key)
                ce = -jnp.mean(jax.nn.log_softmax(logits)[..., 1])
                return ce + enc.aux["vq_loss"], enc.aux

            (loss, aux), grads = nnx.value_and_grad(
                loss_fn, has_aux=True, argnums=nnx.DiffState(0, nnx.Param)
            )(model)
            return loss, aux, grads

        batch = sharding.batch_sharding(mesh, "fsdp", ndim=3)
        mel = jax.device_put(mel, batch)
        loss, aux, grads = step(model, mel, mel_mask, jax.random.key(0))
    assert np.isfinite(float(loss)) and float(aux["vq_loss"]) > 0
    assert int(model.encoder.quantizer.ema_steps[...]) == 1
    assert 0 < int(aux["codes_restarted"]) < cfg.codebook_size  # the unused codes
    g = nnx.to_pure_dict(grads)
    assert np.abs(np.asarray(g["encoder"]["conv1"]["kernel"])).sum() > 0
    assert "quantizer" not in g["encoder"]  # EMA codebook: not a Param
    assert "embed_positions" not in g["encoder"]  # frozen sinusoid table
    assert np.abs(np.asarray(g["encoder"]["embed_positions2"])).sum() > 0
    assert whisper_vq.STEM_STRIDE == 2
