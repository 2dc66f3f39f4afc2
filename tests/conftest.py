"""Test setup: 8 fake CPU devices, CPU platform, absl flags parsed (Grain mp_prefetch needs it)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile from scratch (no persistent compilation cache from an earlier run, cli/__init__.py);
# tests/cli/compile_cache_test.py checks the cache itself.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import dataclasses  # noqa: E402

import pytest  # noqa: E402

# A gs:// bucket in memory, for the real etils.epath path (its fsspec backend, which epath uses for
# gs:// when TensorFlow is absent): only the network is replaced. Like GCS, objects cannot be
# appended to. One class for the session (fsspec caches filesystem instances by class name); the
# fixture empties its store.
_FAKE_GCS = []


def _fake_gcs_class():
    if not _FAKE_GCS:
        from fsspec.implementations.memory import MemoryFileSystem

        class FakeGCS(MemoryFileSystem):
            """An in-memory gs:// bucket store: whole-object writes only."""

            protocol = ("gs", "gcs")
            store: dict = {}  # class-level, as in MemoryFileSystem: one store per class
            pseudo_dirs = [""]

            def _open(self, path, mode="rb", **kwargs):
                if "a" in mode:
                    raise NotImplementedError("GCS objects cannot be appended to")
                return super()._open(path, mode, **kwargs)

        _FAKE_GCS.append(FakeGCS)
    return _FAKE_GCS[0]


@pytest.fixture
def fake_gcs(monkeypatch):
    """Binds fsspec's gs / gcs protocols to an emptied in-memory store; yields the store."""
    import importlib

    from etils import epath

    fake = _fake_gcs_class()
    fake.store.clear()
    fake.pseudo_dirs[:] = [""]
    registry = importlib.import_module("fsspec.registry")._registry
    clear = type(epath.backend.fsspec_backend)._get_filesystem.cache_clear
    for name in ("gs", "gcs"):
        monkeypatch.setitem(registry, name, fake)
    clear()
    yield fake.store
    clear()


def write_tiny_lm(path: str, layout: str = "demo") -> str:
    """A 2-layer random ``tiny`` GLM checkpoint (numpy init: eager NNX init is slow on CPU)."""
    import jax
    import numpy as np
    from flax import nnx

    from glmvoice_jax import checkpoint
    from glmvoice_jax.data import token_layout
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
