import glob
import json

import numpy as np
import pytest
from array_record.python import array_record_module

from glmvoice_jax.corpora import interleave_records
from glmvoice_jax.data import interleave, records, token_layout
from glmvoice_jax.inference import sampling
from glmvoice_jax.workflows import demo_sources

LAYOUT = token_layout.get("demo")


def _read(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        reader = array_record_module.ArrayRecordReader(path)
        out += [records.decode(b, where=path) for b in reader.read_all()]
        reader.close()
    return out


@pytest.fixture(scope="module")
def sampler():
    return sampling.LookupSampler(LAYOUT, codes_per_id=2, noise=0.1)


def test_interleave_job_builds_documents_and_reports_span_stats(sampler, tmp_path):
    docs = demo_sources.bundled_text_docs(40, seed=0)
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in docs) + "\n" + '{"text": ""}\n')
    kw = dict(
        sampler=sampler,
        tokenizer="bytes",
        num_shards=2,
        seed=1,
        process_index=0,
        process_count=1,
        progress=False,
    )
    plan, totals = interleave_records.write_interleaved_records(
        str(src), str(tmp_path / "il"), **kw
    )
    assert totals["records"] == 40 and totals["errors_by_reason"] == {"empty_text": 1}
    boa, eoa = LAYOUT.special("<|begin_of_audio|>"), LAYOUT.special("<|end_of_audio|>")
    out = _read(plan.pattern())
    for ex, text in zip(out, docs):
        assert ex.kind == "interleaved" and ex.loss_mask.all()
        t = ex.tokens
        assert t[:2].tolist() == LAYOUT.bos_ids and t[-1] == LAYOUT.eos_id
        starts, ends = np.flatnonzero(t == boa), np.flatnonzero(t == eoa)
        assert len(starts) == len(ends) >= 1 and (starts < ends).all()
        inside = np.zeros(len(t), bool)
        for a, b in zip(starts, ends):
            inside[a + 1 : b] = True
            assert LAYOUT.is_audio(t[a + 1 : b]).all() and b - a >= 2
        kept = bytes(t[2:-1][~inside[2:-1] & (t[2:-1] < 256)].tolist())
        assert len(kept) < len(text.encode())  # spans of the text were replaced
    extra = {}
    for p in glob.glob(f"{tmp_path}/il/*.stats.json"):
        with open(p) as f:
            stats = json.load(f)
        for k, v in stats["extra"].items():
            extra[k] = extra.get(k, 0) + v
    assert extra["docs"] == 40
    assert extra["span_speech_tokens"] == 2 * extra["span_text_tokens"]
    assert 8 < extra["span_text_tokens"] / extra["spans"] < 12
    assert abs(extra["span_text_tokens"] / extra["doc_text_tokens"] - 0.3) < 0.02
    # Same spans and speech for another shard layout (seeded per document and span).
    plan2, _ = interleave_records.write_interleaved_records(
        str(src), str(tmp_path / "il2"), **dict(kw, num_shards=3)
    )
    assert [e.tokens.tolist() for e in _read(plan2.pattern())] == [e.tokens.tolist() for e in out]


def test_span_config_reaches_the_job(sampler, tmp_path):
    src = tmp_path / "docs.txt"
    src.write_text("\n".join(demo_sources.bundled_text_docs(6, seed=2)) + "\n")
    plan, _ = interleave_records.write_interleaved_records(
        str(src),
        str(tmp_path / "none"),
        sampler=sampler,
        tokenizer="bytes",
        num_shards=1,
        span_cfg=interleave.SpanConfig(ratio=0.0),
        process_index=0,
        process_count=1,
        progress=False,
    )
    for ex in _read(plan.pattern()):
        assert not LAYOUT.is_audio(ex.tokens).any()
