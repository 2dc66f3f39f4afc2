"""files.py: the JSONL reader names the bad line; the atomic writers leave all or nothing."""

import json
import os

import pytest
from etils import epath

from glmvoice_jax import files


def test_objects_name_the_file_and_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n[3]\n')
    got = []
    with pytest.raises(ValueError, match=rf"{path}:4: expected a JSON object, got list"):
        for n, where, obj in files.objects(str(path)):
            got.append((n, where, obj))
    assert got == [(1, f"{path}:1", {"a": 1}), (3, f"{path}:3", {"a": 2})]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
        files.read_jsonl(str(path))


def test_writers_create_the_folder_and_leave_no_temporary(tmp_path):
    files.write_json(str(tmp_path / "a" / "x.json"), {"k": [1, 2]})
    files.write_jsonl(tmp_path / "a" / "x.jsonl", [{"i": 0}, {"i": 1}])
    files.write_bytes(str(tmp_path / "a" / "x.bin"), b"\x00\x01")
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"k": [1, 2]}
    assert files.read_jsonl(str(tmp_path / "a" / "x.jsonl")) == [{"i": 0}, {"i": 1}]
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(tmp_path / "a")) == ["x.bin", "x.json", "x.jsonl"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")

    def rows():
        yield {"i": 0}
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        files.write_jsonl(str(path), rows())
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.jsonl"]
    with pytest.raises(RuntimeError), files.atomic(str(path), ".tmp.wav") as tmp:
        assert tmp.endswith("out.jsonl.tmp.wav")
        open(tmp, "w").close()
        raise RuntimeError
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_atomic_dir_renames_on_success_and_deletes_on_error(tmp_path):
    dst = tmp_path / "ckpt"
    with pytest.raises(ValueError), files.atomic_dir(str(dst), "importing") as tmp:
        assert os.path.basename(tmp).startswith(".ckpt.importing-") and os.path.isdir(tmp)
        (epath.Path(tmp) / "0").mkdir()
        raise ValueError("bad tensor")
    assert os.listdir(tmp_path) == []
    with files.atomic_dir(str(dst)) as tmp:
        (epath.Path(tmp) / "meta.json").write_text("{}")
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(dst) == ["meta.json"]


def test_writers_take_a_gs_uri(fake_gcs):
    files.write_json("gs://bucket/run/summary.json", {"loss": 1.5})
    files.write_jsonl("gs://bucket/run/rows.jsonl", [{"i": 0}])
    root = epath.Path("gs://bucket/run")
    assert json.loads((root / "summary.json").read_text()) == {"loss": 1.5}
    assert (root / "rows.jsonl").read_text() == '{"i": 0}\n'
    assert sorted(p.name for p in root.iterdir()) == ["rows.jsonl", "summary.json"]
