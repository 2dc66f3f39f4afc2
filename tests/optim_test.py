import jax.numpy as jnp
import numpy as np
import pytest

from glmvoice_jax import optim


def test_linear_schedule_of_the_paper():
    lr = optim.schedule(
        {"decay": "linear", "warmup_steps": 1000, "peak_lr": 6e-5, "end_lr": 6e-6}, 119_210
    )
    np.testing.assert_allclose(float(lr(0)), 0.0)
    np.testing.assert_allclose(float(lr(500)), 3e-5, rtol=1e-6)
    np.testing.assert_allclose(float(lr(1000)), 6e-5, rtol=1e-6)
    np.testing.assert_allclose(float(lr(119_210)), 6e-6, rtol=1e-5)


def test_cosine_schedule_ends_at_end_lr():
    lr = optim.schedule(
        {"decay": "cosine", "warmup_steps": 10, "peak_lr": 1e-3, "end_lr": 1e-4}, 110
    )
    np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(lr(60)), 5.5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(lr(110)), 1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="schedule.decay"):
        optim.schedule({"decay": "step", "warmup_steps": 0, "peak_lr": 1, "end_lr": 0}, 10)


def test_weight_decay_skips_norms_and_biases():
    params = {
        "layers": {
            "attn": {"q": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}},
            "attn_norm": {"scale": jnp.ones(2)},
        },
        "embed": {"embedding": jnp.ones(2)},
    }
    mask = optim.decay_mask(params)
    assert mask["layers"]["attn"]["q"] == {"kernel": True, "bias": False}
    assert mask["layers"]["attn_norm"]["scale"] is False
    assert mask["embed"]["embedding"] is True
