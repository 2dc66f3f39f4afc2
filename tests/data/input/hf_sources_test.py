"""Parquet / arrow text sources: the same documents and batches as the ArrayRecord records."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest

from glmvoice_jax.corpora import text_records
from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.data import prompts, records, token_layout
from glmvoice_jax.data.input import hf_sources

LAYOUT = token_layout.get("demo")
OPTIONS = {"tokenizer": "bytes", "layout": "demo"}


def _texts(n, seed=0):
    rng = np.random.default_rng(seed)
    words = ["voice", "token", "ünïcode", "speech", "glm", "pod", "shard", "Ω"]
    return [" ".join(rng.choice(words, rng.integers(1, 30))) for _ in range(n)]


def fineweb_parquet(folder, texts, files=2, row_group_size=7):
    """FineWeb's layout: data/CC-MAIN-<dump>/000_0000k.parquet, text + metadata columns."""
    dump = folder / "data" / "CC-MAIN-2024-10"
    dump.mkdir(parents=True)
    per = -(-len(texts) // files)
    for k in range(files):
        part = texts[k * per : (k + 1) * per]
        table = pa.table(
            {
                "text": part,
                "id": [f"<urn:uuid:{k}-{i}>" for i in range(len(part))],
                "dump": ["CC-MAIN-2024-10"] * len(part),
                "url": [f"https://example.org/{k}/{i}" for i in range(len(part))],
                "language": ["en"] * len(part),
                "language_score": [0.9] * len(part),
                "token_count": [len(t.split()) for t in part],
            }
        )
        pq.write_table(table, dump / f"000_{k:05d}.parquet", row_group_size=row_group_size)
    return str(dump / "*.parquet")


def _spec(name, paths, fmt="parquet", **options):
    opts = tuple(sorted({**OPTIONS, **options}.items()))
    return input_pipeline.SourceSpec(name, (paths,), 1.0, format=fmt, options=opts)


def test_rows_are_the_records_text_records_writes(tmp_path):
    texts = _texts(30)
    glob = fineweb_parquet(tmp_path, texts)
    src = hf_sources.open_source(_spec("web", glob), input_pipeline.list_shards(glob))
    assert len(src) == 30
    for i in (0, 6, 7, 14, 15, 29):  # row-group and file boundaries
        raw = src[i]
        ex = records.decode(raw.data, where="t")
        want = prompts.text(list(texts[i].encode()), LAYOUT, source="web")
        assert ex == want
        assert raw.source == "web" and raw.path.endswith(f"000_{i // 15:05d}.parquet")
        assert raw.index == i % 15
    with pytest.raises(IndexError):
        src[30]


def test_arrow_stream_and_file_match_parquet(tmp_path):
    texts = _texts(12)
    table = pa.table({"text": texts, "id": list(range(12))})
    (tmp_path / "ds" / "train").mkdir(parents=True)
    # datasets' save_to_disk layout: TRAIN/data-0000k-of-0000n.arrow, IPC stream format.
    stream = tmp_path / "ds" / "train" / "data-00000-of-00002.arrow"
    with pa.ipc.new_stream(stream, table.schema) as w:
        w.write_table(table.slice(0, 5))
    with pa.ipc.new_file(
        tmp_path / "ds" / "train" / "data-00001-of-00002.arrow", table.schema
    ) as w:
        w.write_table(table.slice(5))
    glob = str(tmp_path / "ds" / "train" / "*.arrow")
    src = hf_sources.open_source(_spec("web", glob, "arrow"), input_pipeline.list_shards(glob))
    assert len(src) == 12
    for i in range(12):
        ex = records.decode(src[i].data, where="t")
        assert ex == prompts.text(list(texts[i].encode()), LAYOUT, source="web")


def test_same_batches_as_the_array_record_job(tmp_path):
    """The parquet source and text_records' ArrayRecord shard give identical batches."""
    texts = _texts(60, seed=1)
    glob = fineweb_parquet(tmp_path / "pq", texts)
    text_records.write_text_records(
        glob, str(tmp_path / "ar"), tokenizer="bytes", layout="demo", source="web",
        num_shards=1, process_index=0, process_count=1, progress=False,
    )  # fmt: skip
    ar = input_pipeline.SourceSpec("web", (str(tmp_path / "ar" / "*.array_record"),), 1.0)
    args = dict(seq_len=64, batch_size=4, vocab_size=LAYOUT.vocab_size, seed=3)
    a, b = (
        input_pipeline.make_iterator([ar], **args),
        input_pipeline.make_iterator([_spec("web", glob)], **args),
    )
    for _ in range(6):
        x, y = next(a), next(b)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_resume_and_mixture_with_array_record(tmp_path):
    """Mixed with an ArrayRecord source, the state resumes to the same batches."""
    glob = fineweb_parquet(tmp_path / "pq", _texts(40, seed=2), row_group_size=3)
    w = records.ShardWriter(str(tmp_path / "sp" / "sp-00000.array_record"))
    for i in range(25):
        codes = (np.arange(5 + i % 7) + i) % LAYOUT.num_audio_tokens
        w.write(prompts.speech(codes, LAYOUT, source="sp"))
    w.close()
    specs = [
        _spec("web", glob),
        input_pipeline.SourceSpec("sp", (str(tmp_path / "sp" / "*.array_record"),), 1.0),
    ]
    kw = dict(rows=range(4), global_batch_size=4, seq_len=48, vocab_size=LAYOUT.vocab_size, seed=0)
    it = input_pipeline.make_row_iterator(specs, **kw)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(3)]
    start = state[input_pipeline.ROW_STATE_KEY]
    again = input_pipeline.make_row_iterator(specs, start_state=start, **kw)
    for w_batch in want:
        got = next(again)
        for k in w_batch:
            np.testing.assert_array_equal(got[k], w_batch[k])
    assert any(p.endswith(".parquet") for p, _ in start["shards"]["web"])


@pytest.mark.e2e
def test_grain_worker_processes_give_the_same_batches(tmp_path):
    glob = fineweb_parquet(tmp_path, _texts(40, seed=4))
    kw = dict(seq_len=32, batch_size=4, vocab_size=LAYOUT.vocab_size, seed=0)
    one = input_pipeline.make_iterator([_spec("web", glob)], **kw)
    two = input_pipeline.make_iterator([_spec("web", glob)], num_workers=2, **kw)
    for _ in range(2):
        x, y = next(one), next(two)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_empty_and_null_rows_have_no_targets(tmp_path):
    pq.write_table(pa.table({"text": ["ok", "", None, "  "]}), tmp_path / "a.parquet")
    src = hf_sources.open_source(_spec("web", ""), [str(tmp_path / "a.parquet")])
    masks = [records.decode(src[i].data, where="t").loss_mask for i in range(4)]
    assert masks[0].all() and not any(m.any() for m in masks[1:])


def test_config_entries_and_errors(tmp_path):
    pq.write_table(pa.table({"content": ["a"], "n": [1]}), tmp_path / "a.parquet")
    path = str(tmp_path / "a.parquet")
    cfg = {"web": {"paths": path, "weight": 2.0, "format": "parquet", **OPTIONS}}
    (spec,) = input_pipeline.sources_from_config(cfg, "/w")
    assert spec.format == "parquet" and dict(spec.options) == OPTIONS
    with pytest.raises(ValueError, match="no column 'text'.*'content'"):
        hf_sources.open_source(spec, [path])
    spec = _spec("web", path, column="n")
    with pytest.raises(ValueError, match="holds int64, not text"):
        hf_sources.open_source(spec, [path])
    with pytest.raises(ValueError, match="missing \\['layout'\\]"):
        hf_sources.check_options("web", "parquet", {"tokenizer": "bytes"})
    with pytest.raises(ValueError, match="format 'parqet'"):
        hf_sources.check_options("web", "parqet", OPTIONS)
    with pytest.raises(ValueError, match="unknown \\['colum'\\]"):
        input_pipeline.sources_from_config({"w": {"paths": path, "weight": 1, "colum": "x"}}, "")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="bad.parquet is not a readable parquet file"):
        hf_sources.open_source(_spec("web", ""), [str(tmp_path / "bad.parquet")])


def test_stream_resumes_by_count(tmp_path):
    """Streaming over fsspec URLs (memory:// stands in for hf://): exact count-based resume."""
    import fsspec

    texts = _texts(23, seed=5)
    fs = fsspec.filesystem("memory")
    urls = []
    for k, part in enumerate((texts[:10], texts[10:])):
        with fs.open(f"/hf_stream_test/{k}.parquet", "wb") as f:
            pq.write_table(pa.table({"text": part}), f, row_group_size=4)
        urls.append(f"memory:///hf_stream_test/{k}.parquet")
    ds = hf_sources.ParquetStream(urls, batch_rows=3)
    assert [r["text"] for r in ds] == texts
    for cut in (0, 4, 9, 10, 17):
        it = iter(ds)
        for _ in range(cut):
            next(it)
        state = it.get_state()
        again = iter(ds)
        again.set_state(state)
        assert [r["text"] for r in again] == texts[cut:]


def test_bucket_files_read_like_local_ones(fake_gcs, tmp_path):
    """gs:// parquet files (the in-memory bucket of conftest.py behind etils.epath)."""
    from etils import epath

    local = fineweb_parquet(tmp_path, _texts(20, seed=6))
    remote = []
    for path in input_pipeline.list_shards(local):
        remote.append(f"gs://corpus/fineweb/{path.rsplit('/', 1)[1]}")
        with open(path, "rb") as f:
            epath.Path(remote[-1]).write_bytes(f.read())
    a = hf_sources.open_source(_spec("web", local), input_pipeline.list_shards(local))
    b = hf_sources.open_source(_spec("web", ""), remote)
    assert len(b) == 20 and all(a[i].data == b[i].data for i in range(20))
    assert b[19].path == remote[1]
    bucket = input_pipeline.SourceSpec("web", tuple(remote), 1.0, "parquet", _spec("", "").options)
    kw = dict(seq_len=32, batch_size=2, vocab_size=LAYOUT.vocab_size, seed=0)
    x = next(input_pipeline.make_iterator([bucket], **kw))
    y = next(input_pipeline.make_iterator([_spec("web", local)], **kw))
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])


def test_config_validation_checks_the_layout(tmp_path):
    import os

    from glmvoice_jax import config_lib

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    c = config_lib.load_config_file(os.path.join(repo, "configs", "demo_tiny.py"))
    entry = {"paths": "x/*.parquet", "weight": 1.0, "format": "parquet", **OPTIONS}
    c.input.sources.web = entry
    config_lib.validate(c)
    c.input.sources.web.layout = "glm4_voice"
    with pytest.raises(ValueError, match="input.sources.web.layout is 'glm4_voice' but the run"):
        config_lib.validate(c)
    del c.input.sources.web["tokenizer"]
    with pytest.raises(ValueError, match="missing \\['tokenizer'\\]"):
        config_lib.validate(c)


def test_reads_are_right_when_every_read_evicts(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_sources, "_CACHE_BYTES", 1)
    texts = _texts(20, seed=7)
    glob = fineweb_parquet(tmp_path, texts, row_group_size=3)
    src = hf_sources.open_source(_spec("web", glob), input_pipeline.list_shards(glob))
    for i in np.random.default_rng(0).permutation(20):
        ex = records.decode(src[int(i)].data, where="t")
        assert ex == prompts.text(list(texts[i].encode()), LAYOUT, source="web")
    assert len(src._groups) == 1


def test_data_stats_reads_a_parquet_source(tmp_path):
    """glmvoice-data-stats measures a parquet source like an ArrayRecord one."""
    import os

    from glmvoice_jax import config_lib
    from glmvoice_jax.data import stats

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    c = config_lib.load_config_file(os.path.join(repo, "configs", "demo_tiny.py"))
    glob = fineweb_parquet(tmp_path, _texts(30, seed=8))
    c.input.sources = {"web": {"paths": glob, "weight": 1.0, "format": "parquet", **OPTIONS}}
    c.input.seq_len, c.input.global_batch_size = 128, 2
    out = stats.compute(c, str(tmp_path), num_docs=40, num_batches=2)
    web = out["sources"]["web"]
    assert web["docs"] == 40 and web["loss_tokens"] == web["tokens"] and web["speech_tokens"] == 0
    assert out["packed"]["loss_fraction"] > 0.5
