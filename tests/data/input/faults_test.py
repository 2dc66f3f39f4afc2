"""Input faults (issue 17): a changed shard set on resume, a source with no target tokens."""

import json

import numpy as np
import pytest

from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.data import records
from glmvoice_jax.data.input import sources

VOCAB = 1000


def _write(root, name, shard, n_docs, masked=True):
    w = records.ShardWriter(str(root / name / f"{name}-{shard:05d}.array_record"))
    for i in range(n_docs):
        tokens = (np.arange(5 + i % 7) + 10 * shard) % VOCAB
        mask = np.ones_like(tokens, bool) if masked else np.zeros_like(tokens, bool)
        w.write(records.Example(tokens=tokens, loss_mask=mask, source=name, kind="text"))
    w.close()


def _spec(root, name="a"):
    return [input_pipeline.SourceSpec(name, (str(root / name / "*.array_record"),), 1.0)]


def _rows(specs, **kw):
    args = dict(
        rows=range(4),
        global_batch_size=4,
        seq_len=16,
        vocab_size=VOCAB,
        seed=0,
        prefetch_buffer_size=0,
    )
    return input_pipeline.make_row_iterator(specs, **{**args, **kw})


def test_resume_on_another_shard_set_is_refused_naming_the_shards(tmp_path):
    for shard in range(2):
        _write(tmp_path, "a", shard, 20)
    specs = _spec(tmp_path)
    it = _rows(specs)
    next(it)
    state = json.loads(json.dumps(it.get_state()))[input_pipeline.ROW_STATE_KEY]
    assert [p for p, _ in state["shards"]["a"]] == sorted(
        str(p) for p in (tmp_path / "a").glob("*.array_record")
    )
    want = [next(it) for _ in range(2)]
    # Same set: resumes exactly (also in another process count: rows 2..3 alone).
    again = _rows(specs, start_state=state)
    for w in want:
        np.testing.assert_array_equal(next(again)["tokens"], w["tokens"])
    half = _rows(specs, rows=[2, 3], start_state=state)
    np.testing.assert_array_equal(next(half)["tokens"], want[0]["tokens"][2:])

    _write(tmp_path, "a", 2, 20)  # the glob gains a shard
    with pytest.raises(ValueError) as err:
        _rows(specs, start_state=state)
    msg = str(err.value)
    assert "source 'a': added 1 [" in msg and "a-00002.array_record" in msg
    assert "input.allow_shard_change=True" in msg and "\n" not in msg
    _rows(specs, start_state=state, allow_shard_change=True)  # accepted when asked

    (tmp_path / "a" / "a-00002.array_record").unlink()
    (tmp_path / "a" / "a-00000.array_record").unlink()
    _write(tmp_path, "a", 0, 21)  # same name, other size
    (tmp_path / "a" / "a-00001.array_record").unlink()
    with pytest.raises(ValueError, match=r"resized 1 \[.*a-00000.*removed|removed 1 .*a-00001"):
        _rows(specs, start_state=state)
    # Through the iterator's set_state too.
    it2 = _rows(specs)
    with pytest.raises(ValueError, match="removed 1"):
        it2.set_state({input_pipeline.ROW_STATE_KEY: state})


def test_read_row_states_keeps_the_shard_set(tmp_path):
    _write(tmp_path, "a", 0, 10)
    it = _rows(_spec(tmp_path))
    next(it)
    part = json.loads(json.dumps(it.get_state()))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "process_0-of-1.json").write_text(json.dumps(part))
    merged = input_pipeline.read_row_states(tmp_path / "data")
    assert merged["shards"] == part[input_pipeline.ROW_STATE_KEY]["shards"]


def test_a_source_without_target_tokens_is_refused_at_start(tmp_path):
    _write(tmp_path, "good", 0, 10)
    _write(tmp_path, "asr", 0, 10, masked=False)
    _write(tmp_path, "asr", 1, 10, masked=False)
    specs = _spec(tmp_path, "good") + _spec(tmp_path, "asr")
    with pytest.raises(ValueError) as err:
        _rows(specs)
    msg = str(err.value)
    assert msg.startswith("source 'asr' has no target tokens: loss_mask is 0 in all 20 records")
    assert "set its weight to 0" in msg
    _rows([input_pipeline.SourceSpec("asr", specs[1].paths, 0.0), specs[0]])  # disabled: fine


def test_a_moved_run_directory_keeps_its_shard_set():
    """Shards compared below their common folder: a copied run (another disk, a bucket) resumes."""
    saved = {"text": [["/old/disk/run/text/a.rec", 10], ["/old/disk/run/text/b.rec", 20]]}
    now = {"text": [["gs://bucket/run/text/a.rec", 10], ["gs://bucket/run/text/b.rec", 20]]}
    sources.check_shard_set(saved, now, allow=False)  # no error
    now["text"][1][1] = 21
    with pytest.raises(ValueError, match=r"resized 1 \['b.rec'\]"):
        sources.check_shard_set(saved, now, allow=False)
    nested = {"s": [["/a/x/0/p.rec", 1], ["/a/x/1/p.rec", 1]]}
    moved = {"s": [["/b/0/p.rec", 1], ["/b/1/p.rec", 1]]}
    sources.check_shard_set(nested, moved, allow=False)
