import numpy as np
import pytest

from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.data import records
from glmvoice_jax.data.input import sources as input_sources


def test_bucket_globs_split_into_root_and_pattern():
    split = input_sources._split_glob
    assert split("gs://b/corpus/text/*.array_record") == ("gs://b/corpus/text", "*.array_record")
    assert split("gs://b/c/*/x-?.ar") == ("gs://b/c", "*/x-?.ar")
    assert split("gs://b/c/one.ar") == ("gs://b/c/one.ar", "")


def test_local_listing_skips_unfinished_shards(tmp_path):
    ex = records.Example(np.arange(3), np.ones(3, np.uint8), "s", "text")
    for name in ("a-0.array_record", "a-1.array_record"):
        with records.ShardWriter(str(tmp_path / name)) as w:
            w.write(ex)
    (tmp_path / ("a-2.array_record" + records.TMP_SUFFIX)).write_bytes(b"")
    got = input_pipeline.list_shards([str(tmp_path / "a-*.array_record")])
    assert [p.rsplit("/", 1)[1] for p in got] == ["a-0.array_record", "a-1.array_record"]
    with pytest.raises(ValueError, match="matches no file"):
        input_pipeline.list_shards(str(tmp_path / "b-*"))
