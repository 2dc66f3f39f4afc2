import json
import os

import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from glmvoice_jax.corpora import corpus_io, tfds_builders


def _jsonl(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def _tone(n, sr=16000, channels=1):
    t = np.arange(n) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    root = tmp_path_factory.mktemp("LibriSpeech")
    for split, speakers in (("train-clean-5", ("19", "26")), ("dev-clean", ("84",))):
        for spk in speakers:
            chapter = root / split / spk / "121"
            chapter.mkdir(parents=True)
            lines = []
            for u in range(2):
                uid = f"{spk}-121-{u:04d}"
                soundfile.write(chapter / f"{uid}.flac", _tone(1600 + 160 * u), 16000)
                lines.append(f"{uid} HELLO WORLD NUMBER {u}")
            (chapter / f"{spk}-121.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "train-clean-5" / "19" / "121" / "19-121-0009.flac").write_bytes(b"not a flac")
    return str(root)


def test_librispeech_layout_builds_offline_and_reads_back(librispeech, tmp_path):
    folder = tfds_builders.build("librispeech", librispeech, str(tmp_path), "libri_tiny")
    assert folder == str(tmp_path / "libri_tiny" / "1.0.0")
    builder = tfds.builder_from_directory(folder)
    assert set(builder.info.splits) == {"train_clean_5", "dev_clean"}
    train = builder.as_data_source(split="train_clean_5")
    assert len(train) == 4
    by_id = {train[i]["id"].decode(): train[i] for i in range(len(train))}
    ex = by_id["26-121-0001"]
    assert ex["audio"].dtype == np.int16 and ex["audio"].shape == (1760,)
    np.testing.assert_array_equal(ex["audio"], _tone(1760))
    assert ex["sample_rate"] == 16000
    assert ex["text"] == b"HELLO WORLD NUMBER 1" and ex["speaker"] == b"26"
    errors = _jsonl(os.path.join(folder, "errors.train_clean_5.jsonl"))
    assert [(e["id"], e["reason"]) for e in errors] == [("19-121-0009", "unreadable_audio")]
    manifest = _jsonl(os.path.join(folder, "manifest.dev_clean.jsonl"))
    assert [m["id"] for m in manifest] == ["84-121-0000", "84-121-0001"]
    assert manifest[0]["num_samples"] == 1600 and os.path.isfile(manifest[0]["audio"])
    # Rebuilding is a no-op; the corpus reader opens the dataset by folder.
    assert tfds_builders.build("librispeech", librispeech, str(tmp_path), "libri_tiny") == folder
    corpus = corpus_io.open_corpus(str(tmp_path / "libri_tiny"), "dev_clean")
    items = list(corpus.iter_range(range(len(corpus))))
    assert sorted(i.id for i in items) == ["84-121-0000", "84-121-0001"]


def test_manifest_resamples_to_mono_and_lists_bad_inputs(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", _tone(800, 8000, channels=2), 8000)
    soundfile.write(audio / "long.wav", _tone(16000 * 3), 16000)
    soundfile.write(audio / "empty.wav", np.zeros(0, np.int16), 16000)
    lines = [
        {"id": "a", "audio": "audio/a.wav", "text": "hi", "speaker": "s1"},
        {"id": "b", "audio": "audio/missing.wav"},
        {"id": "c", "audio": "audio/long.wav"},
        {"id": "d", "audio": "audio/empty.wav"},
        {"id": "a", "audio": "audio/a.wav"},
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    folder = tfds_builders.build(
        "manifest",
        f"train={manifest}",
        str(tmp_path / "tfds"),
        "m",
        sample_rate=16000,
        max_seconds=2.0,
    )
    ds = tfds.builder_from_directory(folder).as_data_source(split="train")
    assert len(ds) == 1
    ex = ds[0]
    assert ex["sample_rate"] == 16000 and ex["audio"].ndim == 1
    assert abs(len(ex["audio"]) - 1600) <= 2 and ex["text"] == b"hi"
    errors = _jsonl(os.path.join(folder, "errors.train.jsonl"))
    assert sorted(e["reason"] for e in errors) == [
        "bad_manifest_line",
        "duplicate_id",
        "empty_audio",
        "over_long",
        "unreadable_audio",
    ]


def test_text_corpus_splits_and_errors(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(
        b'{"id": "d1", "text": "first doc"}\n{"text": ""}\n\xff\xfe\n{"text": "second"}\n'
    )
    (tmp_path / "b.txt").write_text("line one\n\nline two\n")
    folder = tfds_builders.build(
        "text",
        {"train": str(tmp_path / "*.jsonl"), "test": str(tmp_path / "b.txt")},
        str(tmp_path / "tfds"),
        "texts",
    )
    b = tfds.builder_from_directory(folder)
    train = b.as_data_source(split="train")
    assert sorted(train[i]["text"].decode() for i in range(len(train))) == ["first doc", "second"]
    assert len(b.as_data_source(split="test")) == 2
    errors = _jsonl(os.path.join(folder, "errors.train.jsonl"))
    assert sorted(e["reason"] for e in errors) == ["empty_text", "undecodable"]
    with pytest.raises(ValueError, match="snake_case"):
        tfds_builders.build("text", str(tmp_path / "b.txt"), str(tmp_path), "Bad-Name")
