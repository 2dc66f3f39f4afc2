"""Faults suite, weights and training signals (issue 17): corrupt or poisoned files are named.

A safetensors file whose header lies (offsets past the end, a huge header length, overlapping
ranges, ...) is refused naming the file (and the tensor) in one line, before the library reads
it; an import refuses tensors holding NaN / inf naming the tensor, the file and the count (unless
``--allow_nonfinite``); a logged training interval whose batches hold no loss target warns.
"""

import json
import logging
import os
import pathlib
import shutil
import struct
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from glmvoice_jax import errors
from glmvoice_jax.convert.io import safetensors_dir
from glmvoice_jax.trainers import loop

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def _raw(path, header, data: bytes, length: int | None = None):
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob) if length is None else length))
        f.write(blob)
        f.write(data)


def _f32(shape, begin):
    n = int(np.prod(shape)) * 4
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [begin, begin + n]}


HEADERS = {
    # name: (header, data bytes, header length override, regex after the file name)
    "offsets past the end": (
        {"a": _f32([8], 0)},
        b"\0" * 16,
        None,
        r"tensor a in .*model\.safetensors: data_offsets \[0, 32\] run past the end of the "
        r"data \(16 bytes",
    ),
    "huge header length": ({}, b"", 2**60, r"header length 1,152,921,504,606,846,976 bytes exc"),
    "header past the end": ({}, b"", 4096, r"header length 4,096 bytes runs past the end of"),
    "overlapping ranges": (
        {"a": _f32([4], 0), "b": _f32([4], 8)},
        b"\0" * 24,
        None,
        r"model\.safetensors: tensors a \(bytes \[0, 16\)\) and b \(bytes \[8, 24\)\) overlap",
    ),
    "size not dtype x shape": (
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}},
        b"\0" * 12,
        None,
        r"tensor a in .*: data_offsets \[0, 12\] hold 12 bytes, but F32 of shape \[4\] needs 16",
    ),
    "header not JSON": (None, b"", None, r"model\.safetensors: safetensors header is not valid"),
    "negative shape": (
        {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
        b"\0" * 4,
        None,
        r"tensor a in .*: header entry .* is not",
    ),
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_corrupt_safetensors_header_names_the_file(tmp_path, name):
    header, data, length, pattern = HEADERS[name]
    path = tmp_path / "model.safetensors"
    if header is None:
        path.write_bytes(struct.pack("<Q", 8) + b"{{{{{{{{")
    else:
        _raw(path, header, data, length)
    with pytest.raises(errors.UserError) as err:
        safetensors_dir.SafetensorsDir(str(tmp_path))
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    assert str(path) in msg, msg
    assert __import__("re").search(pattern, msg), msg


def test_a_valid_file_passes_the_header_check(tmp_path):
    save_file({"a": np.ones((2, 3), np.float32), "b": np.zeros(5, np.int64)}, str(tmp_path / "m"))
    safetensors_dir.check_file(str(tmp_path / "m"))


def test_nonfinite_tensor_is_refused_naming_tensor_file_and_count(tmp_path):
    import ml_dtypes

    w = np.ones((4, 4), np.float32)
    w[0, 0], w[1, 1], w[2, 2] = np.nan, np.inf, -np.inf
    b = np.ones(3, ml_dtypes.bfloat16)
    b[2] = np.nan
    save_file({"w": w, "b": b, "ok": np.ones(2, np.float32)}, str(tmp_path / "model.safetensors"))
    st = safetensors_dir.SafetensorsDir(str(tmp_path))
    path = tmp_path / "model.safetensors"
    with pytest.raises(errors.UserError) as err:
        st.read("w")
    assert str(err.value) == (
        f"tensor w in {path} holds 1 NaN and 2 inf of 16 values; the weights are corrupt (pass "
        "--allow_nonfinite to import them anyway)"
    )
    with pytest.raises(errors.UserError, match=r"tensor b in .* holds 1 NaN and 0 inf of 3"):
        st.read("b")
    with pytest.raises(errors.UserError, match=r"tensor w .* 1 NaN and 0 inf of 4 values"):
        st.read("w", rows=(0, 1))  # a block of rows is checked too
    st.read("w", rows=(3, 4))
    st.read("ok")
    with safetensors_dir.allow_nonfinite():
        assert np.isnan(st.read("w")[0, 0])
    with pytest.raises(errors.UserError):
        st.read("w")  # allowed only within


def test_glm_import_refuses_nan_weights(tmp_path):
    from glmvoice_jax.convert.glm import chatglm, glm_weights

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "glm_chatglm", src)
    tensors = dict(safetensors_dir.iter_tensors(str(src)))
    name = "transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][0, :3] = np.nan
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(errors.UserError) as err:
        glm_weights.import_glm(str(src), str(tmp_path / "ck"), chatglm.FORMAT, progress=False)
    msg = str(err.value)
    assert f"tensor {name} in {src / 'model.safetensors'} holds 3 NaN and 0 inf" in msg, msg
    assert not (tmp_path / "ck").exists()
    from glmvoice_jax.cli import import_checkpoint

    argv = ["glmvoice-import", f"--checkpoint={src}", f"--output={tmp_path / 'ck'}"]
    with pytest.raises(errors.UserError, match=f"tensor {name} in .* holds 3 NaN"):
        import_checkpoint.main(argv)
    import_checkpoint.main(argv + ["--allow_nonfinite"])  # the explicit switch lets them in
    assert (tmp_path / "ck").is_dir()


def test_decoder_import_refuses_nan_weights(tmp_path):
    from glmvoice_jax.convert.decoder import decoder_checkpoint

    src = tmp_path / "src"
    shutil.copytree(FIXTURES / "decoder", src)
    for f in src.iterdir():
        os.chmod(f, 0o644)
    pt = src / "hift.pt"
    with zipfile.ZipFile(pt) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    biggest = max((n for n in members if "/data/" in n), key=lambda n: len(members[n]))
    members[biggest] = b"\xff" * len(members[biggest])  # NaN in f32, f16 and bf16 alike
    with zipfile.ZipFile(pt, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(errors.UserError) as err:
        decoder_checkpoint.import_decoder(src, tmp_path / "ck")
    msg = str(err.value)
    assert f" in {pt} holds " in msg and " NaN and 0 inf of " in msg, msg
    assert len(msg.splitlines()) == 1 and not (tmp_path / "ck").exists()


def test_interval_without_loss_targets_warns(caplog):
    steps = [{"tokens_counted": np.float32(0)}, {"tokens_counted": np.float32(0)}]
    with caplog.at_level(logging.WARNING):
        assert loop.warn_no_targets(12, steps)
    lines = [r.getMessage() for r in caplog.records if "loss targets" in r.getMessage()]
    assert lines == [
        "step 12: the 2 batch(es) since the last log hold no loss targets (loss_mask 0 "
        "everywhere): loss and grad_norm 0 mean nothing was trained; check the sources' loss masks"
    ]
    caplog.clear()
    assert not loop.warn_no_targets(12, [{"tokens_counted": np.float32(0)}, {"tokens_counted": 3}])
    assert not loop.warn_no_targets(12, [{"loss": 0.0}])  # a trainer without the count
    assert not caplog.records


@pytest.mark.e2e
def test_cli_import_of_a_corrupt_safetensors_file_is_one_line(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(FIXTURES / "glm_chatglm" / "config.json", src / "config.json")
    _raw(src / "model.safetensors", {"a": _f32([4], 0), "b": _f32([4], 8)}, b"\0" * 24)
    cmd = [sys.executable, "-c", "from glmvoice_jax.cli.import_checkpoint import run; run()"]
    cmd += [f"--checkpoint={src}", f"--output={tmp_path / 'ck'}"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GLMVOICE_DEBUG": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    errs = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errs) == 1 and f"{src / 'model.safetensors'}: tensors a " in errs[0], proc.stderr
    assert "overlap" in errs[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "ck").exists()
