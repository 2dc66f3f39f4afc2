"""glmvoice-import / glmvoice-export / glmvoice-score: flags, dispatch and errors."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from glmvoice_jax.cli import export_checkpoint, import_checkpoint, score

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")


def test_import_export_score_in_process(tmp_path):
    ck, hf, out = tmp_path / "ck", tmp_path / "hf", tmp_path / "out.jsonl"
    src = os.path.join(FIXTURES, "glm_hf")
    meta = import_checkpoint.main(["glmvoice-import", "--checkpoint", src, "--output", str(ck)])
    assert meta["extra"]["source"]["format"] == "transformers"
    files = export_checkpoint.main(
        [
            "glmvoice-export",
            "--checkpoint",
            str(ck / "0"),
            "--output",
            str(hf),
            "--format",
            "chatglm",
        ]
    )
    assert json.loads(pathlib.Path(hf / "config.json").read_text())["architectures"] == [
        "ChatGLMModel"
    ]
    assert "model.safetensors" in files
    stats = score.main(
        [
            "glmvoice-score",
            "--checkpoint",
            str(ck),
            "--input",
            os.path.join(src, "inputs.jsonl"),
            "--output",
            str(out),
            "--noprogress",
        ]
    )
    assert stats["sequences"] == 3 and len(out.read_text().splitlines()) == 3


def test_dispatch(tmp_path):
    assert import_checkpoint.detect(os.path.join(FIXTURES, "glm_chatglm")) == "ChatGLMModel"
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text('{"architectures": ["WhisperVQEncoder"]}')
    with pytest.raises(ValueError, match=r"config.json \(WhisperVQEncoder\) lacks \['d_model'"):
        import_checkpoint.import_checkpoint(str(tmp_path / "w"), str(tmp_path / "x"))
    (tmp_path / "d").mkdir()
    for f in import_checkpoint.DECODER_FILES:
        (tmp_path / "d" / f).write_text("")
    assert import_checkpoint.detect(str(tmp_path / "d")) == "decoder"
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        import_checkpoint.detect(str(tmp_path / "e"))
    with pytest.raises(Exception, match="missing required flag --output"):
        import_checkpoint.main(["glmvoice-import", "--checkpoint", str(tmp_path / "e")])


def test_unsupported_architecture_subprocess(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "glmvoice_jax.cli.import_checkpoint",
            "--checkpoint",
            str(tmp_path / "llama"),
            "--output",
            str(tmp_path / "ck"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("glmvoice-import: error:") and "LlamaForCausalLM" in err
    assert "GlmForCausalLM" in err
    assert not (tmp_path / "ck").exists()
