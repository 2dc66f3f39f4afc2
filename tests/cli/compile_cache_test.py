"""The console scripts turn JAX's persistent compilation cache on unless the user set it."""

import os
import subprocess
import sys

from glmvoice_jax import cli

_PROGRAM = (
    "import glmvoice_jax.cli, jax, jax.numpy as jnp; "
    "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready(); "
    "print(jax.config.jax_compilation_cache_dir)"
)


def test_default_is_the_user_cache_and_a_set_value_wins():
    env = {"XDG_CACHE_HOME": "/c"}
    assert cli.default_compile_cache(env, jax_imported=False)
    assert env["JAX_COMPILATION_CACHE_DIR"] == "/c/glmvoice_jax/jax"
    for user in ("gs://b/jax_cache", ""):  # a shared cache, or off
        env = {"JAX_COMPILATION_CACHE_DIR": user}
        assert not cli.default_compile_cache(env, jax_imported=False)
        assert env == {"JAX_COMPILATION_CACHE_DIR": user}
    assert not cli.default_compile_cache({}, jax_imported=True)


def _run(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update(extra)
    out = subprocess.run(
        [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_a_tool_process_writes_compiled_programs_to_the_cache(tmp_path):
    assert _run(tmp_path) == str(tmp_path / "glmvoice_jax" / "jax")
    entries = os.listdir(tmp_path / "glmvoice_jax" / "jax")
    assert any(e.startswith("jit__lambda") for e in entries), entries
    off = tmp_path / "off"
    off.mkdir()
    assert _run(off, JAX_COMPILATION_CACHE_DIR="") == ""
    assert not (off / "glmvoice_jax").exists()
