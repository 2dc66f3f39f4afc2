import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.data import token_layout
from glmvoice_jax.models import glm, losses

CFG = glm.GLMConfig(
    vocab_size=1024,
    embed_dim=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    mlp_dim=64,
    init_std=0.2,
)
LAYOUT = token_layout.get("demo")


def _loss(model, tokens, seg, pos, mask, chunk):
    hidden = model.hidden_states(tokens, seg, pos)
    targets, weights = losses.shift_targets(tokens, seg, mask)
    sums = losses.chunked_xent_sums(
        hidden, model.head.kernel[...], targets, weights, LAYOUT.is_audio(targets), chunk_size=chunk
    )
    return sums


def test_packed_loss_equals_documents_alone():
    model = glm.GLMDecoder(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 1024, n) for n in (9, 20, 13)]
    masks = [np.ones(9), np.r_[np.zeros(8), np.ones(12)], np.ones(13)]  # doc 2: target-only loss
    row = np.concatenate(docs + [np.zeros(6, int)])
    seg = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)] + [np.zeros(6)])
    pos = np.concatenate([np.arange(len(d)) for d in docs] + [np.arange(6)])
    mask = np.concatenate(masks + [np.zeros(6)])
    packed = _loss(model, *(jnp.array(a[None], jnp.int32) for a in (row, seg, pos, mask)), 16)
    total, count = 0.0, 0.0
    for d, m in zip(docs, masks):
        alone = _loss(
            model,
            jnp.array(d[None], jnp.int32),
            jnp.ones((1, len(d)), jnp.int32),
            jnp.arange(len(d))[None],
            jnp.array(m[None], jnp.int32),
            len(d),
        )
        total += float(alone["loss_sum"])
        count += float(alone["count"])
    assert float(packed["count"]) == count == 8 + 12 + 12
    np.testing.assert_allclose(float(packed["loss_sum"]), total, rtol=1e-5)


def test_chunked_equals_full_logits_and_modality_split():
    model = glm.GLMDecoder(CFG, rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 1024)
    seg = jnp.ones((2, 32), jnp.int32)
    mask = jnp.ones((2, 32), jnp.int32)
    sums = _loss(model, tokens, seg, jnp.arange(32)[None].repeat(2, 0), mask, 8)
    logits = model(tokens)
    lp = jax.nn.log_softmax(logits[:, :-1], -1)
    nll = -jnp.take_along_axis(lp, tokens[:, 1:, None], -1)[..., 0]
    speech = LAYOUT.is_audio(tokens[:, 1:])
    np.testing.assert_allclose(float(sums["loss_sum"]), float(nll.sum()), rtol=1e-5)
    np.testing.assert_allclose(float(sums["speech_sum"]), float((nll * speech).sum()), rtol=1e-5)
    assert float(sums["speech_count"]) == float(speech.sum())
    s = losses.summarize(sums)
    np.testing.assert_allclose(
        float(s["text_loss"]), float((nll * ~speech).sum() / (~speech).sum()), rtol=1e-5
    )
