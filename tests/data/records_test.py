import os
import struct

import numpy as np
import pytest
from array_record.python import array_record_module

from glmvoice_jax.data import records


def _example(n=7, kind="asr", source="corpus_é"):
    mask = np.zeros(n, np.uint8)
    mask[n // 2 :] = 1
    return records.Example(
        tokens=np.arange(n, dtype=np.int32) * 1000 - 3, loss_mask=mask, source=source, kind=kind
    )


@pytest.mark.parametrize("kind", records.KINDS)
def test_round_trip(kind):
    ex = _example(kind=kind)
    got = records.decode(records.encode(ex), where="test")
    assert got == ex
    assert got.tokens.dtype == np.int32 and got.loss_mask.dtype == np.uint8
    np.testing.assert_array_equal(got.tokens, ex.tokens)
    np.testing.assert_array_equal(got.loss_mask, ex.loss_mask)
    assert (got.source, got.kind) == ("corpus_é", kind)


def test_example_converts_and_validates():
    ex = records.Example(tokens=[1, 2, 3], loss_mask=[True, False, True], source="s", kind="text")
    assert ex.tokens.dtype == np.int32 and ex.loss_mask.dtype == np.uint8
    with pytest.raises(ValueError, match="non-empty 1-D"):
        records.Example(tokens=np.zeros(0, np.int32), loss_mask=[], source="s", kind="text")
    with pytest.raises(ValueError, match="shape"):
        records.Example(tokens=[1, 2], loss_mask=[1], source="s", kind="text")
    with pytest.raises(ValueError, match="kind 'audio'"):
        records.Example(tokens=[1], loss_mask=[1], source="s", kind="audio")
    with pytest.raises(ValueError, match="only 0 and 1"):
        records.Example(tokens=[1], loss_mask=[2], source="s", kind="text")
    with pytest.raises(ValueError, match="int32"):
        records.Example(tokens=np.array([2**40]), loss_mask=[1], source="s", kind="text")


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:5], "shorter than the 12-byte header"),
        (lambda d: _corrupt(d, 0, b"XXXX"), "bad magic"),
        (lambda d: _corrupt(d, 4, bytes([records.VERSION + 1])), "version 2"),
        (lambda d: _corrupt(d, 5, bytes([200])), "kind index 200"),
        (lambda d: d[:-1], "truncated or corrupt"),
        (lambda d: d + b"\0", "truncated or corrupt"),
        (lambda d: _corrupt(d, 8, struct.pack("<I", 0)), "n_tokens=0"),
        (lambda d: _corrupt(d, 12 + 4 * 7, bytes([5])), "loss_mask holds value 5"),
    ],
)
def test_decode_rejects_corrupt_bytes(mutate, message):
    data = mutate(records.encode(_example()))
    with pytest.raises(ValueError, match=message) as e:
        records.decode(data, where="shard x.array_record record 12")
    assert str(e.value).startswith("shard x.array_record record 12: ")


def test_shard_writer_renames_on_close(tmp_path):
    path = str(tmp_path / "sub" / "a.array_record")
    with records.ShardWriter(path) as w:
        w.write(_example(3))
        w.write(_example(5))
        assert os.listdir(tmp_path / "sub") == ["a.array_record" + records.TMP_SUFFIX]
    assert w.num_records == 2
    assert os.listdir(tmp_path / "sub") == ["a.array_record"]
    reader = array_record_module.ArrayRecordReader(path)
    got = [records.decode(b, where="t") for b in reader.read_all()]
    assert got == [_example(3), _example(5)]


def test_interrupted_shard_writer_leaves_nothing_complete(tmp_path):
    path = str(tmp_path / "a.array_record")
    with pytest.raises(KeyboardInterrupt), records.ShardWriter(path) as w:
        w.write(_example())
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_list_shards(tmp_path):
    for name in ["b.array_record", "a.array_record", "c.array_record" + records.TMP_SUFFIX]:
        (tmp_path / name).write_bytes(b"")
    pattern = str(tmp_path / "*.array_record*")
    assert records.list_shards(pattern) == [
        str(tmp_path / "a.array_record"),
        str(tmp_path / "b.array_record"),
    ]
    both = records.list_shards([pattern, str(tmp_path / "a.array_record")])
    assert both == records.list_shards(pattern)
    with pytest.raises(ValueError, match="'/nope/\\*.array_record' matches no file"):
        records.list_shards([pattern, "/nope/*.array_record"])
    with pytest.raises(ValueError, match="no shard patterns"):
        records.list_shards([])
