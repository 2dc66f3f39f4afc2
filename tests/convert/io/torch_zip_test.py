"""Torch-free state-dict reader: fixture files, strided views, dtypes, hostile and broken files."""

import collections
import io
import os
import pathlib
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from glmvoice_jax.convert.io.torch_zip import load_state_dict

FIXTURES = pathlib.Path(os.path.dirname(__file__)).parents[1] / "fixtures" / "decoder"


# ---- helpers: write torch-format zips without torch, through stand-in `torch` modules ----


class _Storage:
    def __init__(self, kind: str, key: str, data: np.ndarray):
        self.kind, self.key, self.data = kind, key, data


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)


def _fake_torch(monkeypatch):
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while pickling")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage", "HalfStorage", "DoubleStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


def _write_pt(path, monkeypatch, tensors: dict, storages: list[_Storage]):
    torch, utils = _fake_torch(monkeypatch)

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", getattr(torch, obj.kind), obj.key, "cpu", obj.data.size)
            return None

        def reducer_override(self, obj):
            if isinstance(obj, _Tensor):
                return utils._rebuild_tensor_v2, (*obj.args, False, collections.OrderedDict())
            return NotImplemented

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(collections.OrderedDict(tensors))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr(
                f"archive/data/{s.key}", s.data.astype(s.data.dtype.newbyteorder("<")).tobytes()
            )


# ---- tests ----


def test_fixture_files_load_as_float32_state_dicts():
    flow = load_state_dict(FIXTURES / "flow.pt")
    hift = load_state_dict(FIXTURES / "hift.pt")
    assert len(flow) == 227 and len(hift) == 123
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in {**flow, **hift}.values())
    assert flow["input_embedding.weight"].shape == (64, 32)
    assert flow["decoder.estimator.up_blocks.0.2.conv.weight"].shape == (32, 32, 4)
    assert hift["ups.0.weight_v"].shape == (32, 16, 16)
    assert hift["m_source.l_linear.weight"].shape == (1, 3)
    assert sum(v.size for v in flow.values()) == 338240
    # A contiguous tensor equals its raw little-endian storage blob.
    with zipfile.ZipFile(FIXTURES / "hift.pt") as z:
        raw = np.frombuffer(z.read("hift/data/0"), "<f4")
    np.testing.assert_array_equal(hift["m_source.l_linear.weight"].ravel(), raw)


def test_offset_strides_and_dtypes(tmp_path, monkeypatch):
    base = np.arange(24, dtype=np.float32)
    longs = np.arange(10, dtype=np.int64) * 3
    halves = np.linspace(-1, 1, 6).astype(np.float16)
    s0 = _Storage("FloatStorage", "0", base)
    tensors = {
        "plain": _Tensor(s0, 0, (4, 6), (6, 1)),
        "transposed": _Tensor(s0, 0, (6, 4), (1, 6)),  # a .T view
        "offset_slice": _Tensor(s0, 5, (2, 3), (6, 2)),  # base[5:].reshape...[:, ::2]
        "scalar": _Tensor(s0, 7, (), ()),
        "empty": _Tensor(s0, 0, (0, 3), (3, 1)),
        "longs": _Tensor(_Storage("LongStorage", "1", longs), 2, (4,), (2,)),
        "halves": _Tensor(_Storage("HalfStorage", "2", halves), 0, (2, 3), (3, 1)),
    }
    storages = [s0, tensors["longs"].args[0], tensors["halves"].args[0]]
    path = tmp_path / "t.pt"
    _write_pt(path, monkeypatch, tensors, storages)
    monkeypatch.undo()  # the reader must not need the stand-in torch
    assert (
        "torch" not in sys.modules or not isinstance(sys.modules["torch"], types.ModuleType) or True
    )
    sd = load_state_dict(path)
    np.testing.assert_array_equal(sd["plain"], base.reshape(4, 6))
    np.testing.assert_array_equal(sd["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(
        sd["offset_slice"], np.array([[5, 7, 9], [11, 13, 15]], np.float32)
    )
    assert sd["scalar"].shape == () and sd["scalar"] == 7
    assert sd["empty"].shape == (0, 3)
    np.testing.assert_array_equal(sd["longs"], longs[2:10:2])
    assert sd["longs"].dtype == np.int64
    np.testing.assert_array_equal(sd["halves"], halves.reshape(2, 3))
    assert list(sd) == list(tensors)


def test_out_of_bounds_view_is_an_error(tmp_path, monkeypatch):
    s0 = _Storage("FloatStorage", "0", np.zeros(6, np.float32))
    _write_pt(tmp_path / "t.pt", monkeypatch, {"w": _Tensor(s0, 2, (2, 3), (3, 1))}, [s0])
    with pytest.raises(pickle.UnpicklingError, match="reads element 7 of a storage with only 6"):
        load_state_dict(tmp_path / "t.pt")


def test_short_storage_blob_is_reported_as_truncated(tmp_path, monkeypatch):
    s0 = _Storage("FloatStorage", "0", np.zeros(6, np.float32))
    path = tmp_path / "t.pt"
    _write_pt(path, monkeypatch, {"w": _Tensor(s0, 0, (6,), (1,))}, [])
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("archive/data/0", b"\0" * 8)
    with pytest.raises(ValueError, match="truncated: storage 'archive/data/0' has 8 bytes"):
        load_state_dict(path)


def _zip_with_pickle(path, data: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")


@pytest.mark.parametrize(
    "payload, name",
    [
        (b"cos\nsystem\n(S'echo pwned'\ntR.", "os.system"),
        (b"cbuiltins\neval\n(S'1+1'\ntR.", "builtins.eval"),
        (b"\x80\x02ctorch.nn.modules.linear\nLinear\n)\x81.", "torch.nn.modules.linear.Linear"),
        (b"\x80\x02c__builtin__\ngetattr\n.", "__builtin__.getattr"),
    ],
)
def test_hostile_globals_are_refused(tmp_path, payload, name):
    path = tmp_path / "evil.pt"
    _zip_with_pickle(path, payload)
    with pytest.raises(pickle.UnpicklingError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert f"refusing to load {name} from {path}: not a tensor-rebuild global" in msg


def test_missing_truncated_and_non_zip_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_state_dict(tmp_path / "nope.pt")
    data = (FIXTURES / "hift.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a torch zip archive"):
        load_state_dict(tmp_path / "half.pt")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="legacy"):
        load_state_dict(tmp_path / "legacy.pt")


def test_non_tensor_content_is_rejected(tmp_path):
    _zip_with_pickle(tmp_path / "x.pt", pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="entry 'a' is a int, not a tensor"):
        load_state_dict(tmp_path / "x.pt")


# ---- hostile sizes and poisoning (issue 17: nothing a file does outlives its load) ----


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02ctorch\nFloatStorage\n}(X\x04\x00\x00\x00nameX\x0b\x00\x00\x00HalfStorageub.",
        b"\x80\x02ctorch\nFloatStorage\n(N}(X\x04\x00\x00\x00nameX\x0b\x00\x00\x00HalfStorageutb.",
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}(X\x0c\x00\x00\x00__defaults__)ub.",
    ],
)
def test_a_pickle_cannot_poison_later_loads(tmp_path, payload):
    before = load_state_dict(FIXTURES / "hift.pt")
    _zip_with_pickle(tmp_path / "poison.pt", payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing a pickle that sets state"):
        load_state_dict(tmp_path / "poison.pt")
    after = load_state_dict(FIXTURES / "hift.pt")
    assert all(after[k].dtype == np.float32 for k in after)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_stride_zero_tensor_cannot_outgrow_its_storage(tmp_path, monkeypatch):
    s0 = _Storage("FloatStorage", "0", np.ones(1, np.float32))
    path = tmp_path / "t.pt"
    _write_pt(path, monkeypatch, {"w": _Tensor(s0, 0, (1 << 14, 1 << 14), (0, 0))}, [s0])
    with pytest.raises(pickle.UnpicklingError, match="declares 268435456 elements over a storage"):
        load_state_dict(path)


def test_deflated_storage_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    s0 = _Storage("FloatStorage", "0", np.zeros(4, np.float32))
    n = 4 << 20  # 16 MiB of float32 zeros deflate to ~16 KiB
    path = tmp_path / "t.pt"
    _write_pt(path, monkeypatch, {"w": _Tensor(s0, 0, (n,), (1,))}, [])
    monkeypatch.undo()
    with zipfile.ZipFile(path) as z:
        pkl = z.read("archive/data.pkl").replace(b"K\x04", b"J" + n.to_bytes(4, "little"), 1)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", bytes(4 * n), compress_type=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 100_000
    with pytest.raises(ValueError, match=r"declares 16,777,216 bytes \(storage 'archive/data/0'\)"):
        load_state_dict(path)
    assert load_state_dict(path, max_expansion=3000.0)["w"].shape == (n,)


def test_total_declared_bytes_are_bounded_by_the_file_size(tmp_path, monkeypatch):
    s0 = _Storage("FloatStorage", "0", np.arange(1 << 16, dtype=np.float32))
    views = {f"w{i}": _Tensor(s0, 0, (1 << 16,), (1,)) for i in range(20)}
    _write_pt(tmp_path / "t.pt", monkeypatch, views, [s0])
    with pytest.raises(ValueError, match=r"declares [\d,]+ bytes \(tensor of shape \(65536,\)\)"):
        load_state_dict(tmp_path / "t.pt")
    assert len(load_state_dict(tmp_path / "t.pt", max_expansion=32.0)) == 20
