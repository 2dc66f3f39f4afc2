import collections
import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python import array_record_module

from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.data import records
from glmvoice_jax.data.input import sources as input_sources

VOCAB = 10**8
# Document `uid` of length n has tokens uid * 1000 + [0, n): a packed piece tells its origin.
_STRIDE = 1000


def _doc(uid: int, n: int) -> records.Example:
    tokens = uid * _STRIDE + np.arange(n)
    mask = (np.arange(n) + uid) % 3 != 0  # an irregular mask, to check it is packed with its tokens
    return records.Example(tokens=tokens, loss_mask=mask, source="test", kind="asr")


def _write_source(root, name, uids, lengths, num_shards=2):
    """Writes docs round-robin over num_shards shards; returns the SourceSpec paths."""
    writers = [
        records.ShardWriter(str(root / name / f"{name}-{i:05d}.array_record"))
        for i in range(num_shards)
    ]
    for i, (uid, n) in enumerate(zip(uids, lengths, strict=True)):
        writers[i % num_shards].write(_doc(uid, n))
    for w in writers:
        w.close()
    return (str(root / name / "*.array_record"),)


def _two_sources(tmp_path, n_docs=200, weights=(3.0, 1.0), max_len=40):
    rng = np.random.default_rng(0)
    specs = []
    for s, weight in enumerate(weights):
        uids = [s * 10_000 + i for i in range(n_docs)]
        paths = _write_source(tmp_path, f"src{s}", uids, rng.integers(4, max_len, n_docs))
        specs.append(input_pipeline.SourceSpec(f"src{s}", paths, weight))
    return specs


def _make(specs, **kw):
    args = dict(seq_len=64, batch_size=4, vocab_size=VOCAB, seed=0, prefetch_buffer_size=4)
    args.update(kw)
    return input_pipeline.make_iterator(specs, **args)


def _pieces(batch):
    """Yields (tokens, positions, loss_mask) of every packed piece of every row."""
    for r in range(batch["tokens"].shape[0]):
        seg = batch["segment_ids"][r]
        for s in np.unique(seg[seg > 0]):
            sel = seg == s
            yield batch["tokens"][r, sel], batch["positions"][r, sel], batch["loss_mask"][r, sel]


def test_batches_shapes_segments_and_contents(tmp_path):
    it = _make(_two_sources(tmp_path))
    for _ in range(3):
        batch = next(it)
        assert sorted(batch) == ["loss_mask", "positions", "segment_ids", "tokens"]
        for v in batch.values():
            assert v.shape == (4, 64) and v.dtype == np.int32
        pad = batch["segment_ids"] == 0
        assert not batch["loss_mask"][pad].any() and not batch["positions"][pad].any()
        for tokens, positions, mask in _pieces(batch):
            np.testing.assert_array_equal(positions, np.arange(len(tokens)))
            original = _doc(int(tokens[0]) // _STRIDE, _STRIDE - 1)
            np.testing.assert_array_equal(tokens, original.tokens[: len(tokens)])
            np.testing.assert_array_equal(mask, original.loss_mask[: len(tokens)])
        # Segments are contiguous and numbered 1.. in each row.
        for row in batch["segment_ids"]:
            used = row[row > 0]
            np.testing.assert_array_equal(np.unique(used), np.arange(1, used.max() + 1))
            assert np.all(np.diff(used) >= 0)


def test_long_documents_are_chunked_not_truncated(tmp_path):
    paths = _write_source(tmp_path, "long", [7, 8], [150, 64], num_shards=1)
    it = _make([input_pipeline.SourceSpec("long", paths, 1.0)], prefetch_buffer_size=0)
    starts = collections.defaultdict(set)
    for _ in range(4):
        for tokens, positions, _ in _pieces(next(it)):
            uid, start = divmod(int(tokens[0]), _STRIDE)
            assert positions[0] == 0
            np.testing.assert_array_equal(tokens, uid * _STRIDE + start + np.arange(len(tokens)))
            starts[uid].add((start, len(tokens)))
    assert starts[7] == {(0, 64), (64, 64), (128, 22)}
    assert starts[8] == {(0, 64)}


def test_mixture_follows_weights(tmp_path):
    it = _make(_two_sources(tmp_path, weights=(3.0, 1.0)), batch_size=8)
    counts = collections.Counter()
    for _ in range(20):
        for tokens, _, _ in _pieces(next(it)):
            counts[int(tokens[0]) // _STRIDE // 10_000] += 1
    share = counts[0] / (counts[0] + counts[1])
    assert sum(counts.values()) > 300
    assert abs(share - 0.75) < 0.05, counts


def test_same_seed_same_batches_and_other_seed_differs(tmp_path):
    specs = _two_sources(tmp_path)
    a, b, c = _make(specs), _make(specs), _make(specs, seed=1)
    for _ in range(4):
        x, y, z = next(a), next(b), next(c)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(x["tokens"], z["tokens"])


def test_checkpoint_resume_gives_identical_batches(tmp_path):
    specs = _two_sources(tmp_path)
    it = _make(specs)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # the state must be JSON
    expected = [next(it) for _ in range(3)]
    resumed = _make(specs)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_process_slices_are_disjoint_and_cover_one_process(tmp_path):
    specs = _two_sources(tmp_path, n_docs=50)

    def uids(process_index, process_count, n):
        ds = input_pipeline.record_dataset(
            specs,
            vocab_size=VOCAB,
            seed=3,
            process_index=process_index,
            process_count=process_count,
        )
        return [int(ds[i]["tokens"][0]) // _STRIDE for i in range(n)]

    single = uids(0, 1, 60)
    p0, p1 = uids(0, 2, 30), uids(1, 2, 30)
    assert p0 == single[0::2] and p1 == single[1::2]
    assert len(set(single)) == 60  # 60 < one epoch of both sources: no repeats
    assert not set(p0) & set(p1)


def test_zero_weight_source_is_skipped_without_touching_files(tmp_path):
    specs = _two_sources(tmp_path, n_docs=20)
    specs.append(input_pipeline.SourceSpec("off", ("/does/not/exist/*",), 0.0))
    next(_make(specs))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ((0.0, 0.0), "sum to 0"),
        ((1.0, -1.0), "source 'src1' has weight -1.0"),
        ((1.0, float("nan")), "source 'src1' has weight nan"),
    ],
)
def test_bad_weights(tmp_path, weights, message):
    specs = [
        input_pipeline.SourceSpec(f"src{i}", (str(tmp_path / "*"),), w)
        for i, w in enumerate(weights)
    ]
    with pytest.raises(ValueError, match=message):
        _make(specs)


def test_missing_files_and_empty_source(tmp_path):
    missing = input_pipeline.SourceSpec("speech_en", (str(tmp_path / "none" / "*.ar"),), 1.0)
    with pytest.raises(ValueError, match="source 'speech_en': shard pattern .*none.* matches no"):
        _make([missing])
    empty = input_pipeline.SourceSpec("empty", _write_source(tmp_path, "empty", [], []), 1.0)
    with pytest.raises(ValueError, match="source 'empty' has no records"):
        _make([empty])


def test_corrupt_shard_is_named(tmp_path):
    (tmp_path / "bad.array_record").write_bytes(b"not an array record" * 10)
    spec = input_pipeline.SourceSpec("web", (str(tmp_path / "*.array_record"),), 1.0)
    with pytest.raises(
        ValueError, match="source 'web': shard .*bad.array_record is not a readable"
    ):
        _make([spec])


def test_corrupt_record_is_named(tmp_path):
    path = str(tmp_path / "raw.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    writer.write(records.encode(_doc(1, 5)))
    writer.write(b"garbage bytes, not a record")
    writer.close()
    spec = input_pipeline.SourceSpec("web", (path,), 1.0)
    it = _make([spec], prefetch_buffer_size=0)
    with pytest.raises(ValueError, match=f"source 'web' shard {path} record 1: bad magic"):
        for _ in range(3):
            next(it)


@pytest.mark.parametrize("bad_id", [VOCAB, VOCAB + 5, -1])
def test_out_of_vocab_id_names_source_shard_and_record(tmp_path, bad_id):
    shard = records.ShardWriter(str(tmp_path / "s.array_record"))
    for n in range(3):
        shard.write(_doc(n, 10))
    tokens = np.arange(6)
    tokens[4] = bad_id
    shard.write(records.Example(tokens=tokens, loss_mask=np.ones(6), source="x", kind="text"))
    shard.close()
    spec = input_pipeline.SourceSpec("tts_zh", (str(tmp_path / "s.array_record"),), 1.0)
    it = _make([spec], prefetch_buffer_size=0)
    message = (
        f"source 'tts_zh' shard {tmp_path / 's.array_record'} record 3: token id {bad_id} at "
        f"position 4 is outside the vocabulary \\[0, {VOCAB}\\)"
    )
    with pytest.raises(ValueError, match=message):
        for _ in range(3):
            next(it)


def test_bad_arguments(tmp_path):
    specs = _two_sources(tmp_path, n_docs=10)
    with pytest.raises(ValueError, match="seq_len must be positive"):
        _make(specs, seq_len=0)
    with pytest.raises(ValueError, match="process_index \\(2\\) must lie in"):
        _make(specs, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="names must be unique"):
        _make(specs + specs[:1])
    with pytest.raises(ValueError, match="no data sources"):
        _make([])


def test_sources_from_config():
    cfg = {
        "text": {"paths": "{workdir}/data/text/*.array_record", "weight": 0.3},
        "speech": {"paths": ["/a/*", "{workdir}/b/*"], "weight": 1},
    }
    specs = input_pipeline.sources_from_config(cfg, "/run")
    assert specs == [
        input_pipeline.SourceSpec("text", ("/run/data/text/*.array_record",), 0.3),
        input_pipeline.SourceSpec("speech", ("/a/*", "/run/b/*"), 1.0),
    ]
    with pytest.raises(ValueError, match="missing \\['weight'\\], unknown \\['wieght'\\]"):
        input_pipeline.sources_from_config({"text": {"paths": "x", "wieght": 1.0}}, "/run")
    with pytest.raises(ValueError, match="'paths' must be a string or a list"):
        input_pipeline.sources_from_config({"text": {"paths": 3, "weight": 1.0}}, "/run")


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume(tmp_path):
    specs = _two_sources(tmp_path, n_docs=50)
    want = [next(it) for it in [_make(specs)] for _ in range(4)]
    it = _make(specs, num_workers=1)
    got = [next(it), next(it)]
    state = it.get_state()
    resumed = _make(specs, num_workers=1)
    resumed.set_state(state)
    got += [next(resumed), next(resumed)]
    for w, g in zip(want, got, strict=True):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])


def test_orbax_checkpoint_round_trip(tmp_path):
    specs = _two_sources(tmp_path, n_docs=30)
    it = _make(specs)
    next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        want = [next(it) for _ in range(2)]
        resumed = _make(specs)
        mngr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    for w in want:
        got = next(resumed)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])


def test_many_shards_with_few_open_readers(tmp_path, monkeypatch):
    monkeypatch.setattr(input_sources, "_MAX_OPEN_READERS", 3)
    paths = _write_source(tmp_path, "many", range(40), [5] * 40, num_shards=20)
    source = input_pipeline.ShardedRecordSource("many", records.list_shards(paths))
    assert len(source) == 40
    for i in np.random.default_rng(0).permutation(40):
        ex = records.decode(source[i].data, where="t")
        shard, local = divmod(int(i), 2)
        assert int(ex.tokens[0]) // _STRIDE == local * 20 + shard  # round-robin writing
        assert len(source._readers) <= 3
    with pytest.raises(IndexError):
        source[40]


def test_shard_groups_read_only_their_shards_in_any_process_count(tmp_path):
    n = 120
    paths = _write_source(tmp_path, "src", list(range(n)), [20] * n, num_shards=4)
    spec = [input_pipeline.SourceSpec("src", paths, 1.0)]
    kw = dict(global_batch_size=4, seq_len=64, vocab_size=VOCAB, seed=0, prefetch_buffer_size=0)

    def batches(rows, **extra):
        it = input_pipeline.make_row_iterator(spec, rows=rows, shard_groups=2, **kw, **extra)
        return [next(it) for _ in range(6)], it

    one, _ = batches([0, 1, 2, 3])
    halves = [batches([0, 1]), batches([2, 3])]
    for b, whole in enumerate(one):  # 1 process or 2: the same global batches
        for key, value in whole.items():
            both = np.concatenate([halves[0][0][b][key], halves[1][0][b][key]])
            np.testing.assert_array_equal(value, both)
    for g, (got, _) in enumerate(halves):  # doc i was written to shard i % 4; group g = {g, g+2}
        uids = {int(t[0]) // _STRIDE for batch in got for t, _, _ in _pieces(batch)}
        assert {u % 4 for u in uids} == {g, g + 2}
    state = next(iter(halves[1][1].get_state().values()))
    assert state["shard_groups"] == 2
    with pytest.raises(ValueError, match="shard_groups=2 but this run has shard_groups=1"):
        input_pipeline.make_row_iterator(spec, rows=[2, 3], start_state=state, **kw)
    with pytest.raises(ValueError, match="4 shard\\(s\\) for input.shard_groups=8"):
        input_pipeline.make_row_iterator(
            spec, rows=[0], shard_groups=8, **dict(kw, global_batch_size=8)
        )
