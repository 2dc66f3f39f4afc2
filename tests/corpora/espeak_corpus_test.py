"""The espeak-ng corpus: a handful of utterances, the manifest schema, the split, determinism."""

import hashlib
import json
import os
import shutil

import pytest
import soundfile

from glmvoice_jax.corpora import espeak_corpus

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="needs espeak-ng and sox (apt-get install -y espeak-ng sox)",
)


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def test_small_corpus_schema_split_and_determinism(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    kw = dict(max_sentences=4, variants_per_sentence=2, heldout_every=2)
    paths = espeak_corpus.make_corpus(a, **kw)
    train, heldout = _rows(paths["train"]), _rows(paths["heldout"])
    assert len(train) == len(heldout) == 4  # sentences 0, 2 train; 1, 3 held out; 2 voices each
    assert not {r["text"] for r in train} & {r["text"] for r in heldout}  # split by sentence
    for r in train + heldout:
        assert set(r) >= {"id", "audio", "text", "speaker", "speed_wpm", "pitch", "seconds"}
        info = soundfile.info(os.path.join(a, r["audio"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.5 < info.duration == pytest.approx(r["seconds"], abs=1e-3)
    assert len({r["speaker"] for r in train + heldout}) >= 3
    # A second call is a no-op; another directory gets bit-identical audio.
    first = _rows(paths["train"])[0]
    mtime = os.stat(os.path.join(a, first["audio"])).st_mtime_ns
    assert espeak_corpus.make_corpus(a, **kw) == paths
    assert os.stat(os.path.join(a, first["audio"])).st_mtime_ns == mtime
    espeak_corpus.make_corpus(b, **kw)
    assert _md5(os.path.join(a, first["audio"])) == _md5(os.path.join(b, first["audio"]))


def test_bundled_sentence_lists_and_plan():
    natural = espeak_corpus.read_sentences(espeak_corpus.SENTENCE_SETS["natural"])
    grammar = espeak_corpus.read_sentences(espeak_corpus.SENTENCE_SETS["grammar"])
    assert len(natural) >= 200 and len(set(natural)) == len(natural)
    assert len(grammar) >= 1000 and len(set(grammar)) == len(grammar)
    utts = espeak_corpus.plan(grammar[:60], variants_per_sentence=1, heldout_every=10)
    assert sum(u["split"] == "heldout" for u in utts) == 6
    combos = {(u["speaker"], u["speed_wpm"]) for u in utts}
    assert len(combos) == len(espeak_corpus.VOICES) * len(espeak_corpus.SPEEDS_WPM)
    with pytest.raises(ValueError, match="heldout_every"):
        espeak_corpus.plan(natural, heldout_every=1)
