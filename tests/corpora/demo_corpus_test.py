import glob
import os

import numpy as np
import pytest
from array_record.python import array_record_module

from glmvoice_jax.corpora import demo_corpus
from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.data import records, token_layout

LAYOUT = token_layout.get("demo")


def _read(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        reader = array_record_module.ArrayRecordReader(path)
        out += [records.decode(b, where=path) for b in reader.read_all()]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    return out, demo_corpus.write_demo_corpus(out, docs_per_source=60, num_shards=3)


def test_layout_of_the_corpus(corpus):
    out, patterns = corpus
    assert sorted(patterns) == sorted(demo_corpus.SOURCES)
    for source, pattern in patterns.items():
        assert len(glob.glob(pattern)) == 3
        assert os.path.exists(os.path.join(out, source, f"{source}-00002-of-00003.array_record"))
        docs = _read(pattern)
        assert len(docs) == 60
        for ex in docs:
            assert ex.kind == source and ex.source == f"demo_{source}"
            assert 64 <= len(ex.tokens) <= 600
            assert ex.loss_mask.all()
            assert ex.tokens.min() >= 0 and ex.tokens.max() < LAYOUT.vocab_size
            assert ex.tokens[:2].tolist() == LAYOUT.bos_ids


def test_document_formats(corpus):
    _, patterns = corpus
    boa, eoa = LAYOUT.special("<|begin_of_audio|>"), LAYOUT.special("<|end_of_audio|>")
    for ex in _read(patterns["text"]):
        assert ex.tokens[-1] == LAYOUT.eos_id
        text = bytes(ex.tokens[2:-1].tolist()).decode("ascii")
        assert text[0].isupper() and "." in text
    for ex in _read(patterns["speech"]):
        assert ex.tokens[2] == boa and ex.tokens[-1] == eoa
        assert LAYOUT.is_audio(ex.tokens[3:-1]).all()
    spans = 0
    for ex in _read(patterns["interleaved"]):
        t = ex.tokens[2:-1]
        assert ex.tokens[-1] == LAYOUT.eos_id
        starts, ends = np.flatnonzero(t == boa), np.flatnonzero(t == eoa)
        assert len(starts) == len(ends)
        spans += len(starts)
        for s, e in zip(starts, ends, strict=True):
            assert s < e and LAYOUT.is_audio(t[s + 1 : e]).all() and (e - s - 1) % 2 == 0
        outside = np.ones(len(t), bool)
        for s, e in zip(starts, ends, strict=True):
            outside[s : e + 1] = False
        assert (t[outside] < 256).all()
    assert spans > 60


def test_deterministic_and_idempotent(corpus, tmp_path):
    out, patterns = corpus
    again = demo_corpus.write_demo_corpus(str(tmp_path), docs_per_source=60, num_shards=3)
    for source in demo_corpus.SOURCES:
        assert _read(again[source]) == _read(patterns[source])
    path = demo_corpus.shard_path(str(tmp_path), "text", 0, 3)
    mtime = os.stat(path).st_mtime_ns
    demo_corpus.write_demo_corpus(str(tmp_path), docs_per_source=60, num_shards=3)
    assert os.stat(path).st_mtime_ns == mtime  # complete corpus: nothing rewritten
    other = demo_corpus.write_demo_corpus(str(tmp_path), seed=1, docs_per_source=60, num_shards=3)
    assert os.stat(path).st_mtime_ns != mtime
    assert _read(other["text"]) != _read(patterns["text"])


def test_feeds_the_input_pipeline(corpus):
    _, patterns = corpus
    specs = [input_pipeline.SourceSpec(s, (p,), 1.0) for s, p in patterns.items()]
    it = input_pipeline.make_iterator(
        specs, seq_len=256, batch_size=2, vocab_size=LAYOUT.vocab_size, seed=0
    )
    batch = next(it)
    assert batch["tokens"].shape == (2, 256)
    assert (batch["segment_ids"] > 0).mean() > 0.5
