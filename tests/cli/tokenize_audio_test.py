"""glmvoice-tokenize on the tiny release-layout fixture: tokens equal the reference extraction,
bad audio is listed with its reason, finished parts are not redone, array_record output, and an
Orbax checkpoint made by glmvoice-import gives the same tokens as the HF directory it came from.
"""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import soundfile
from array_record.python import array_record_module

from glmvoice_jax.cli import import_checkpoint, tokenize_audio
from glmvoice_jax.data import records, token_layout

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "whisper_vq")


def _expected():
    with open(os.path.join(FIXTURE, "expected_tokens.jsonl")) as f:
        return {r["id"]: r["tokens"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The 5 fixture files plus a broken, an empty, a silent and a NaN file."""
    d = tmp_path_factory.mktemp("audio")
    for f in glob.glob(os.path.join(FIXTURE, "audio", "*.wav")):
        shutil.copy(f, d)
    (d / "zz_broken.wav").write_bytes(b"RIFF not really a wav file")
    soundfile.write(d / "zz_empty.wav", np.zeros((0,), np.float32), 16000)
    soundfile.write(d / "zz_silent.wav", np.zeros((8000,), np.float32), 16000)
    nan = np.full((8000,), np.nan, np.float32)
    soundfile.write(d / "zz_nan.wav", nan, 16000, subtype="FLOAT")
    return str(d)


def _run(*args):
    return tokenize_audio.main(["glmvoice-tokenize", *args])


def test_directory_to_jsonl_with_errors_and_resume(inputs, tmp_path):
    out = str(tmp_path / "tokens.jsonl")
    args = ("--checkpoint", FIXTURE, "--input", inputs, "--output", out, "--files_per_part", "3")
    stats = _run(*args)
    assert stats["files"] == 5 and stats["skipped"] == 4 and stats["parts"] == 3
    with open(out) as f:
        rows = [json.loads(line) for line in f]
    assert [r["id"] for r in rows] == sorted(_expected())
    for r in rows:
        assert r["tokens"] == _expected()[r["id"]], r["id"]
    with open(out[: -len(".jsonl")] + ".jsonl.errors.jsonl") as f:
        reasons = {r["id"]: r["reason"] for r in map(json.loads, f)}
    assert sorted(reasons) == ["zz_broken", "zz_empty", "zz_nan", "zz_silent"]
    assert "cannot decode" in reasons["zz_broken"] and "no samples" in reasons["zz_empty"]
    assert "NaN" in reasons["zz_nan"] and "silent" in reasons["zz_silent"]
    # Resume: only the missing part is redone; the output is the same.
    parts = sorted(glob.glob(out + ".parts/part-*.jsonl"))
    mtimes = {p: os.stat(p).st_mtime_ns for p in parts}
    os.remove(parts[1])
    with open(out) as f:
        before = f.read()
    os.remove(out)
    stats = _run(*args)
    assert stats["parts"] == 1
    with open(out) as f:
        assert f.read() == before
    for p in (parts[0], parts[2]):
        assert os.stat(p).st_mtime_ns == mtimes[p]


def test_orbax_checkpoint_manifest_to_array_record(tmp_path):
    ckpt = str(tmp_path / "ckpt")  # the release directory through glmvoice-import
    import_checkpoint.main(["glmvoice-import", f"--checkpoint={FIXTURE}", f"--output={ckpt}"])
    out = str(tmp_path / "shards")
    manifest = os.path.join(FIXTURE, "audio.jsonl")
    stats = _run("--checkpoint", ckpt, "--input", manifest, "--output", out,
                 "--output_format", "array_record")  # fmt: skip
    assert stats["files"] == 5 and stats["skipped"] == 0
    layout = token_layout.get("glm4_voice")
    (shard,) = glob.glob(os.path.join(out, "speech-*.array_record"))
    reader = array_record_module.ArrayRecordReader(shard)
    examples = [records.decode(b, where=shard) for b in reader.read_all()]
    with open(manifest) as f:
        ids = [json.loads(line)["id"] for line in f]
    for uid, ex in zip(ids, examples):
        assert ex.kind == "speech" and ex.loss_mask.all()
        bos = layout.bos_ids + [layout.special(token_layout.BEGIN_AUDIO)]
        assert ex.tokens[:3].tolist() == bos
        assert ex.tokens[-1] == layout.special(token_layout.END_AUDIO)
        assert layout.ids_to_codes(ex.tokens[3:-1]).tolist() == _expected()[uid]
    with pytest.raises(ValueError, match="another job"):
        _run("--checkpoint", ckpt, "--input", manifest, "--output", out,
             "--output_format", "array_record", "--files_per_part", "2")  # fmt: skip
