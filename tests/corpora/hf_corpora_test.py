"""Hugging Face corpora in their real layouts: FineWeb parquet, MLS (Hub + OpenSLR), Emilia tars."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from array_record.python import array_record_module

from glmvoice_jax.corpora import corpus_io, hf_corpora, text_records, tfds_builders
from glmvoice_jax.data import prompts, records, token_layout

LAYOUT = token_layout.get("demo")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _audio(n, fmt="FLAC", sr=16000, seed=0):
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t)
    buf = io.BytesIO()
    soundfile.write(buf, x, sr, format=fmt)
    return buf.getvalue()


def test_fineweb_parquet_to_text_records(tmp_path):
    """data/CC-MAIN-*/000_0000k.parquet -> text_records, row by row, in any job split."""
    texts = ["first document", "", "ünïcode text", "third", None, "last one"]
    for k, dump in enumerate(("CC-MAIN-2024-10", "CC-MAIN-2024-18")):
        folder = tmp_path / "fineweb" / "data" / dump
        folder.mkdir(parents=True)
        part = texts[3 * k : 3 * k + 3]
        table = pa.table(
            {
                "text": pa.array(part, pa.string()),
                "id": [f"<urn:uuid:{k}{i}>" for i in range(3)],
                "dump": [dump] * 3,
                "url": ["https://example.org"] * 3,
                "language_score": [0.9] * 3,
                "token_count": [3] * 3,
            }
        )
        pq.write_table(table, folder / "000_00000.parquet", row_group_size=2)
    glob = str(tmp_path / "fineweb" / "data" / "*" / "*.parquet")
    corpus = corpus_io.open_corpus(glob)
    assert isinstance(corpus, hf_corpora.TableCorpus) and len(corpus) == 6
    items = list(corpus.iter_range(range(6)))
    assert [it.fields["text"] for it in items] == texts
    assert items[2].id == "<urn:uuid:02>" and items[3].fields["dump"] == "CC-MAIN-2024-18"
    assert list(corpus.iter_range(range(1, 4))) == items[1:4]  # a job shard's block
    out = tmp_path / "text"
    for _ in range(2):  # a rerun skips finished shards: same bytes
        _, totals = text_records.write_text_records(
            glob, str(out), tokenizer="bytes", layout="demo", source="fineweb", num_shards=2,
            process_index=0, process_count=1, progress=False,
        )  # fmt: skip
    got = []
    for shard in records.list_shards(str(out / "*.array_record")):
        reader = array_record_module.ArrayRecordReader(shard)
        got += [records.decode(b, where=shard) for b in reader.read_all()]
        reader.close()
    want = [t for t in texts if t]
    assert [bytes(ex.tokens[2:-1].astype(np.uint8)).decode() for ex in got] == want
    assert got[0] == prompts.text(list(b"first document"), LAYOUT, source="fineweb")
    errors = [e for f in sorted(out.glob("*.errors.jsonl")) for e in _jsonl(f)]
    assert sorted(e["reason"] for e in errors) == ["empty_text", "no_text"]


def _mls_row(uid, audio, text):
    spk, chapter, _ = uid.split("_")
    return {
        "audio": {"bytes": audio, "path": f"{uid}.flac"},
        "original_path": f"http://archive.org/{uid}.mp3",
        "begin_time": 1.5,
        "end_time": 3.0,
        "transcript": text,
        "audio_duration": 1.5,
        "speaker_id": spk,
        "chapter_id": chapter,
        "file": f"{uid}.flac",
        "id": uid,
    }


def test_mls_hub_parquet_manifest_and_tfds(tmp_path):
    """facebook/multilingual_librispeech: LANGUAGE/SPLIT-0000k-of-0000n.parquet."""
    lang = tmp_path / "multilingual_librispeech" / "polish"
    lang.mkdir(parents=True)
    rows = [
        _mls_row("10087_10388_000000", _audio(3200), "dzień dobry"),
        _mls_row("10087_10388_000001", _audio(1600, seed=1), "jak się masz"),
        _mls_row("6892_10350_000007", _audio(2400, seed=2), "  "),
    ]
    pq.write_table(pa.Table.from_pylist(rows[:2]), lang / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), lang / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), lang / "dev-00000-of-00001.parquet")
    out = tmp_path / "mls_pl"
    path, n, skipped = hf_corpora.mls_manifest(str(lang), str(out), "train")
    assert (n, skipped) == (2, 1)
    lines = _jsonl(path)
    assert [x["id"] for x in lines] == ["10087_10388_000000", "10087_10388_000001"]
    assert lines[1] == {
        "id": "10087_10388_000001",
        "audio": "audio/10087/10388/10087_10388_000001.flac",
        "text": "jak się masz",
        "speaker": "10087",
    }
    data, sr = soundfile.read(out / lines[0]["audio"])
    assert sr == 16000 and data.shape == (3200,)
    assert _jsonl(out / hf_corpora.ERRORS)[0]["reason"] == "empty_text"
    folder = tfds_builders.build("manifest", path, str(tmp_path / "tfds"), "mls_polish")
    built = _jsonl(os.path.join(folder, "manifest.train.jsonl"))
    assert [(b["id"], b["num_samples"], b["text"]) for b in built] == [
        ("10087_10388_000000", 3200, "dzień dobry"),
        ("10087_10388_000001", 1600, "jak się masz"),
    ]


def test_mls_openslr_layout(tmp_path):
    """mls_LANGUAGE/SPLIT/transcripts.txt + SPLIT/audio/SPEAKER/BOOK/ID.flac (or .opus)."""
    root = tmp_path / "mls_german"
    lines = []
    for uid, seed in (("1844_931_000010", 0), ("1844_931_000011", 1), ("2037_1100_000000", 2)):
        spk, book, _ = uid.split("_")
        folder = root / "dev" / "audio" / spk / book
        folder.mkdir(parents=True, exist_ok=True)
        if seed < 2:
            (folder / f"{uid}.flac").write_bytes(_audio(1600, seed=seed))
        lines.append(f"{uid}\tguten tag nummer {seed}")
    (root / "dev" / "transcripts.txt").write_text("\n".join(lines + ["garbage"]) + "\n")
    path, n, skipped = hf_corpora.mls_manifest(str(root), str(tmp_path / "out"), "dev")
    assert (n, skipped) == (2, 2)
    assert _jsonl(path)[0]["speaker"] == "1844" and _jsonl(path)[1]["text"] == "guten tag nummer 1"
    reasons = sorted(e["reason"] for e in _jsonl(tmp_path / "out" / hf_corpora.ERRORS))
    assert reasons == ["bad_line", "no_audio"]
    with pytest.raises(ValueError, match="neither an OpenSLR folder"):
        hf_corpora.mls_manifest(str(root), str(tmp_path / "x"), "train")


def _emilia_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, meta, audio in samples:
            for name, data in ((f"{key}.json", json.dumps(meta).encode()), (f"{key}.mp3", audio)):
                if data is None:
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_emilia_webdataset_tars(tmp_path):
    """amphion/Emilia-Dataset: LANG/LANG-B00000k.tar of KEY.mp3 + KEY.json."""
    mp3 = _audio(16000, fmt="MP3", sr=24000)
    samples = []
    for s, dnsmos in enumerate((3.4, 2.1, 3.1)):
        key = f"EN_B00000_S0000{s}_W000000"
        meta = {
            "id": key,
            "wav": f"EN_B00000/EN_B00000_S0000{s}/mp3/{key}.mp3",
            "text": f" Spontaneous speech number {s}.",
            "duration": 0.667,
            "speaker": f"EN_B00000_S0000{s}",
            "language": "en",
            "dnsmos": dnsmos,
        }
        samples.append((key, meta, mp3))
    samples.append(("EN_B00000_S00009_W000000", {"id": "x"}, None))  # json without audio
    (tmp_path / "EN").mkdir()
    _emilia_tar(tmp_path / "EN" / "EN-B000000.tar", samples)
    out = tmp_path / "emilia"
    for _ in range(2):  # a rerun gives the same bytes
        path, n, skipped = hf_corpora.emilia_manifest(
            str(tmp_path / "EN" / "*.tar"), str(out), min_dnsmos=3.0
        )
        with open(path, "rb") as f:
            first = f.read()
    assert (n, skipped) == (2, 2)
    lines = _jsonl(path)
    assert lines[0] == {
        "id": "EN_B00000_S00000_W000000",
        "audio": "audio/EN/B00000/EN_B00000_S00000_W000000.mp3",
        "text": "Spontaneous speech number 0.",
        "speaker": "EN_B00000_S00000",
        "language": "en",
        "duration": 0.667,
        "dnsmos": 3.4,
    }
    with open(path, "rb") as f:
        assert first == f.read()
    audio, sr = tfds_builders.read_audio(str(out / lines[1]["audio"]), 16000)
    assert sr == 16000 and abs(audio.size - 10667) < 2000  # decoded mp3 (codec padding)
    reasons = sorted(e["reason"] for e in _jsonl(out / hf_corpora.ERRORS))
    assert reasons == ["bad_sample", "low_dnsmos"]


def test_hf_manifest_command_line(tmp_path):
    key = "DE_B00000_S00000_W000000"
    meta = {"id": key, "text": " Guten Tag.", "speaker": "DE_B00000_S00000", "dnsmos": 3.3}
    _emilia_tar(tmp_path / "DE-B000000.tar", [(key, meta, _audio(800, fmt="MP3", sr=24000))])
    args = ["--kind=emilia", f"--src={tmp_path}/*.tar", f"--out={tmp_path}/out"]
    proc = subprocess.run(
        [sys.executable, "-m", "data_pipelines.hf_manifest", *args],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "1 utterances, 0 skipped" in proc.stdout
    assert _jsonl(tmp_path / "out" / hf_corpora.MANIFEST)[0]["text"] == "Guten Tag."
