"""glmvoice-export-decoder: a jax.export artifact whose standalone loader matches glmvoice-decode.

The loader is the snippet of docs/decoder_export.md, run verbatim in a ``python -I`` subprocess
where glmvoice_jax, flax and torch cannot be imported. Tolerances: artifact vs glmvoice-decode
1e-4 (blocks; measured 3.6e-6), artifact vs the reference fixture 1e-3 (the fixture tolerance).
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from glmvoice_jax.cli import decode, export_decoder
from glmvoice_jax.models.speech_decoder.export import exact_token_limit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "decoder")
DOC = os.path.join(ROOT, "docs", "decoder_export.md")

# Makes the standalone environment explicit: these packages must not be needed by the loader.
_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("glmvoice_jax", "flax", "torch", "orbax"):
            raise ModuleNotFoundError(f"blocked in this test: {name}")
sys.meta_path.insert(0, _Block())
for _name in ("glmvoice_jax", "flax", "torch"):
    try:
        __import__(_name)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{_name} is importable in the loader's environment")
"""


def _read(path: str, mode: str = "r") -> str | bytes:
    with open(path, mode) as f:
        return f.read()


def _loader_snippet() -> str:
    text = _read(DOC)
    section = text.split("## Loading the artifact", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_exact_token_limit_is_where_the_float32_rule_departs():
    assert exact_token_limit(12.5) == 3391  # N = 3392: 23373 exact frames vs 23372 in float32
    assert len(_loader_snippet().strip().splitlines()) <= 16


def test_artifact_runs_standalone_and_matches_glmvoice_decode(tmp_path):
    artifact = str(tmp_path / "decoder.jaxexport")
    info = export_decoder.main(
        ["glmvoice-export-decoder", "--checkpoint", FIXTURES, "--output", artifact]
    )
    assert info["max_tokens"] == 3391 and info["output"]["sample_rate"] == 22050
    assert json.loads(_read(artifact + ".json"))["bytes"] == os.path.getsize(artifact)

    utt = json.loads(_read(os.path.join(FIXTURES, "tokens.jsonl")).splitlines()[2])
    assert utt["id"] == "vtok2_n18"
    tokens = tmp_path / "tokens.jsonl"
    bad = {"id": "bad", "tokens": [64] + utt["tokens"][1:]}  # same length: no second compile
    tokens.write_text(json.dumps(utt) + "\n" + json.dumps(bad) + "\n")
    script = tmp_path / "load_decoder.py"
    script.write_text(_BLOCK + _loader_snippet())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-I", str(script), artifact, str(tokens), str(tmp_path / "standalone")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    decode.main(
        ["glmvoice-decode", "--checkpoint", FIXTURES, "--input", str(tokens)]
        + ["--output", str(tmp_path / "decoded"), "--noise", "zeros", "--noprogress"]
    )
    got, rate = sf.read(tmp_path / "standalone" / "vtok2_n18.wav", dtype="float32")
    want, _ = sf.read(tmp_path / "decoded" / "vtok2_n18.wav", dtype="float32")
    assert rate == 22050 and got.shape == want.shape == (124 * 256,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    reference = np.load(os.path.join(FIXTURES, "expected", "vtok2_n18.wav.npy"))
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-3)
    assert np.isnan(sf.read(tmp_path / "standalone" / "bad.wav", dtype="float32")[0]).all()

    # Bounds are enforced by the artifact itself, before any compilation. A deserialized artifact
    # reports the violated N <= 3391 only as a shape-refinement error (jax keeps no message).
    exported = jax.export.deserialize(bytearray(_read(artifact, "rb")))
    with pytest.raises(ValueError, match="Error refining shapes|N <= 3391"):
        exported.call(np.zeros(3392, np.int32))
    with pytest.raises(ValueError, match="Expected value >= 1 for dimension variable 'N'"):
        exported.call(np.zeros(0, np.int32))


def test_max_tokens_above_the_exact_limit_is_refused(tmp_path):
    argv = ["glmvoice-export-decoder", "--checkpoint", FIXTURES, "--output", str(tmp_path / "f")]
    with pytest.raises(ValueError, match=r"max_tokens = 4000 is outside \[1, 3391\]"):
        export_decoder.main(argv + ["--max_tokens", "4000"])
    assert not os.listdir(tmp_path)
