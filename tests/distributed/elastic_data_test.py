"""Elastic data order: global batches are the same for any process count, worker count or row
placement, and a data state saved by N processes resumes on M."""

import json

import numpy as np
import pytest

from glmvoice_jax.corpora import demo_corpus
from glmvoice_jax.data import input as input_pipeline

B, T = 8, 64
KW = dict(global_batch_size=B, seq_len=T, vocab_size=10**6, seed=0, prefetch_buffer_size=2)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    demo_corpus.write_demo_corpus(str(root / "c"), docs_per_source=40, num_shards=2)
    cfg = {n: {"paths": f"{root}/c/{n}/*.array_record", "weight": w} for n, w in
           (("text", 0.3), ("speech", 0.2), ("interleaved", 0.5))}  # fmt: skip
    return input_pipeline.sources_from_config(cfg, str(root))


def _blocks(count):
    return [range(p * B // count, (p + 1) * B // count) for p in range(count)]


def _global(iterators):
    parts = [next(it) for it in iterators]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _equal(a, b):
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _save(iterators, path):
    """What Grain's checkpoint handler writes: one process_<i>-of-<n>.json per process."""
    path.mkdir()
    for i, it in enumerate(iterators):
        name = f"process_{i}-of-{len(iterators)}.json"
        (path / name).write_text(json.dumps(it.get_state()))
    return path


@pytest.fixture(scope="module")
def reference(specs):
    it = input_pipeline.make_row_iterator(specs, rows=range(B), **KW)
    return [next(it) for _ in range(6)]


@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2), (4, 1), (1, 8)])
def test_state_saved_by_n_processes_resumes_on_m(specs, reference, tmp_path, before, after):
    its = [input_pipeline.make_row_iterator(specs, rows=r, **KW) for r in _blocks(before)]
    for step in range(3):
        _equal(_global(its), reference[step])
    state = input_pipeline.read_row_states(_save(its, tmp_path / "data"))
    assert sorted(state["rows"]) == list(range(B))
    its = [
        input_pipeline.make_row_iterator(specs, rows=r, start_state=state, **KW)
        for r in _blocks(after)
    ]
    for step in range(3, 6):
        _equal(_global(its), reference[step])


def test_rows_need_not_be_contiguous(specs, reference):
    even = input_pipeline.make_row_iterator(specs, rows=[0, 2, 4, 6], **KW)
    odd = input_pipeline.make_row_iterator(specs, rows=[7, 5, 3, 1], **KW)  # any order in
    for step in range(2):
        a, b = next(even), next(odd)
        np.testing.assert_array_equal(a["tokens"], reference[step]["tokens"][0::2])
        np.testing.assert_array_equal(b["tokens"], reference[step]["tokens"][1::2])


@pytest.mark.slow
def test_worker_processes_change_nothing_and_their_state_is_elastic(specs, reference, tmp_path):
    # 2 processes with 2 Grain workers each, resumed by 1 process without workers.
    its = [input_pipeline.make_row_iterator(specs, rows=r, num_workers=2, **KW) for r in _blocks(2)]
    for step in range(2):
        _equal(_global(its), reference[step])
    state = input_pipeline.read_row_states(_save(its, tmp_path / "data"))
    it = input_pipeline.make_row_iterator(specs, rows=range(B), start_state=state, **KW)
    for step in range(2, 4):
        _equal(next(it), reference[step])


def test_worker_count_must_divide_the_rows(specs):
    with pytest.raises(ValueError, match=r"num_workers \(3\) must divide the 4 rows"):
        input_pipeline.make_row_iterator(specs, rows=range(4), num_workers=3, **KW)


def test_incomplete_or_mismatched_states_are_refused(specs, tmp_path):
    its = [input_pipeline.make_row_iterator(specs, rows=r, **KW) for r in _blocks(2)]
    data = _save(its, tmp_path / "data")
    state = input_pipeline.read_row_states(data)
    with pytest.raises(ValueError, match="saved with seq_len=64 but this run has seq_len=128"):
        input_pipeline.make_row_iterator(
            specs, rows=range(B), start_state=state, **{**KW, "seq_len": 128}
        )
    with pytest.raises(ValueError, match="saved with global_batch_size=8"):
        input_pipeline.make_row_iterator(
            specs, rows=range(4), start_state=state, **{**KW, "global_batch_size": 4}
        )
    (data / "process_1-of-2.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"written by 2; missing \[1\]"):
        input_pipeline.read_row_states(data)
    with pytest.raises(FileNotFoundError, match="no Grain data state"):
        input_pipeline.read_row_states(tmp_path / "nothing")
    (data / "process_1-of-2.json").write_text(json.dumps({"next_index": 3}))
    with pytest.raises(ValueError, match="holds no row-stream state"):
        input_pipeline.read_row_states(data)


def test_bad_rows(specs):
    with pytest.raises(ValueError, match="rows must be distinct indices in"):
        input_pipeline.make_row_iterator(specs, rows=[0, 8], **KW)
    with pytest.raises(ValueError, match="rows must be distinct"):
        input_pipeline.make_row_iterator(specs, rows=[1, 1], **KW)
