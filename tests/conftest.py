"""Test setup: 8 fake CPU devices, CPU platform, absl flags parsed (Grain mp_prefetch needs it)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import dataclasses  # noqa: E402

import pytest  # noqa: E402


def write_tiny_lm(path: str, layout: str = "demo") -> str:
    """A 2-layer random ``tiny`` GLM checkpoint (numpy init: eager NNX init is slow on CPU)."""
    import jax
    import numpy as np
    from flax import nnx

    from glmvoice_jax import checkpoint, token_layout
    from glmvoice_jax.models import glm

    cfg = dataclasses.replace(glm.VARIANTS["tiny"], num_layers=2, remat_policy="none")
    shapes = nnx.to_pure_dict(
        nnx.state(nnx.eval_shape(lambda: glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))))
    )
    rng = np.random.default_rng(0)

    def init(key_path, x):
        if key_path[-1].key == "scale":
            return np.ones(x.shape, x.dtype)
        return (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)

    params = jax.tree_util.tree_map_with_path(init, shapes)
    lay = token_layout.get(layout) if isinstance(layout, str) else layout
    checkpoint.write_weights(str(path), params, checkpoint.model_meta(cfg, lay))
    return str(path)


@pytest.fixture(scope="session")
def write_lm():
    """``write_tiny_lm(path, layout="demo")``: for tests that need another layout or a copy."""
    return write_tiny_lm


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny random GLM checkpoint in the ``demo`` layout, shared by a test module."""
    return write_tiny_lm(str(tmp_path_factory.mktemp("lm") / "ckpt"))
