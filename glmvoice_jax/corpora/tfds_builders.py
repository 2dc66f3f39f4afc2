"""TFDS dataset builders for local corpora, stored as array_record without TensorFlow.

Three kinds (jax_stack_notes.md §8: only Tensor / Text / Scalar features and array_record work
without TF, so audio is an int16 Tensor with ZLIB encoding plus its sample rate):

* ``librispeech``: a LibriSpeech-layout folder, ``[SPLIT/]SPEAKER/CHAPTER/*.flac`` with
  ``SPEAKER-CHAPTER.trans.txt`` ("UTTERANCE_ID TRANSCRIPT" lines). Sub-folders that are not
  speaker ids (e.g. ``train-clean-100``, ``dev-clean``) are splits, named with ``-`` -> ``_``;
  speaker folders directly under the root make one "train" split.
* ``manifest``: JSONL lines ``{"id", "audio", "text"?, "speaker"?}``; relative audio paths are
  relative to the manifest file. One manifest per split.
* ``text``: ``.jsonl`` ({"text", "id"?}) or ``.txt`` (one document per line) files per split.

Speech features: ``id``, ``audio`` (int16 [S], mono: channels averaged), ``sample_rate``, ``text``
("" when absent), ``speaker``, ``path``. Text features: ``id``, ``text``.

Next to the array_record files each speech split gets ``manifest.<split>.jsonl``
({"id", "audio", "text", "speaker", "num_samples", "sample_rate"}: the input of
``glmvoice-tokenize`` and the transcripts of ``speech_records.py``), and every split gets
``errors.<split>.jsonl``: the inputs skipped (unreadable / empty / over-long audio, empty or
undecodable text, duplicate ids), one ``{"id", "reason", "detail"}`` per line.

Build offline with ``build(...)`` or ``python -m data_pipelines.build_tfds``; read with
``tfds.builder_from_directory(DATA_DIR/NAME/1.0.0).as_data_source(split)`` or
``glmvoice_jax.corpora.corpus_io.open_corpus``. TFDS writes each dataset in one process; rebuilding
an
existing version is a no-op, and a build killed midway leaves only an ``incomplete.*`` folder
that the next build ignores.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator, Mapping

import numpy as np
import soundfile
import soxr

KINDS = ("librispeech", "manifest", "text")
VERSION = "1.0.0"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _tfds():
    import tensorflow_datasets as tfds  # lazy: seconds to import; only TFDS inputs need it

    return tfds


def read_audio(path: str, sample_rate: int | None) -> tuple[np.ndarray, int]:
    """(int16 mono samples, sample rate) of an audio file; resampled when sample_rate is set."""
    data, sr = soundfile.read(path, dtype="int16", always_2d=True)  # (S, channels)
    if data.shape[1] > 1:
        data = np.round(data.astype(np.float32).mean(axis=1)).astype(np.int16)
    else:
        data = data[:, 0]
    if sample_rate and sr != sample_rate:
        wav = soxr.resample(data.astype(np.float32) / 32768.0, sr, sample_rate, quality="HQ")
        data = np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)
        sr = sample_rate
    return data, int(sr)


def librispeech_splits(root: str) -> dict[str, list[tuple[str, str, str, str]]]:
    """Split -> [(utterance id, audio path, transcript, speaker)] of a LibriSpeech-layout folder.

    Raises:
      ValueError: the folder holds neither speaker folders nor split folders.
    """
    if not os.path.isdir(root):
        raise ValueError(f"LibriSpeech root {root!r} is not a folder")
    children = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if children and all(d.isdigit() for d in children):
        split_dirs = {"train": root}
    else:
        split_dirs = {
            d.replace("-", "_"): os.path.join(root, d) for d in children if not d.isdigit()
        }
    out = {}
    for split, sdir in split_dirs.items():
        items = []
        for dirpath, _, files in sorted(os.walk(sdir)):
            texts: dict[str, str] = {}
            for name in sorted(files):
                if name.endswith(".trans.txt"):
                    with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                        for line in f:
                            uid, _, text = line.strip().partition(" ")
                            if uid:
                                texts[uid] = text
            speaker = os.path.relpath(dirpath, sdir).split(os.sep)[0]
            for name in sorted(files):
                if name.endswith((".flac", ".wav")):
                    uid = name.rsplit(".", 1)[0]
                    items.append((uid, os.path.join(dirpath, name), texts.get(uid, ""), speaker))
        if items:
            out[split] = items
    if not out:
        raise ValueError(
            f"{root!r} holds no LibriSpeech-layout audio (expected [SPLIT/]SPEAKER/CHAPTER/*.flac)"
        )
    return out


def manifest_items(path: str, errors: list[dict]) -> list[tuple[str, str, str, str]]:
    """[(id, audio path, text, speaker)] of a manifest JSONL; bad lines go to ``errors``."""
    base = os.path.dirname(os.path.abspath(path))
    items = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                uid, audio = obj["id"], obj["audio"]
                if not isinstance(uid, str) or not isinstance(audio, str):
                    raise ValueError('"id" and "audio" must be strings')
            except (UnicodeDecodeError, ValueError, KeyError) as e:
                errors.append({"id": where, "reason": "bad_manifest_line", "detail": repr(e)})
                continue
            text = obj.get("text") or ""
            items.append((uid, os.path.join(base, audio), str(text), str(obj.get("speaker", ""))))
    return items


def _speech_examples(
    items: list[tuple[str, str, str, str]],
    errors: list[dict],
    manifest: list[dict],
    sample_rate: int | None,
    max_seconds: float,
) -> Iterator[tuple[str, dict]]:
    seen: set[str] = set()
    for uid, path, text, speaker in items:
        if uid in seen:
            errors.append({"id": uid, "reason": "duplicate_id", "detail": path})
            continue
        seen.add(uid)
        try:
            audio, sr = read_audio(path, sample_rate)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a skipped input
            errors.append({"id": uid, "reason": "unreadable_audio", "detail": f"{path}: {e}"})
            continue
        if audio.size == 0:
            errors.append({"id": uid, "reason": "empty_audio", "detail": path})
            continue
        if audio.size > max_seconds * sr:
            secs = audio.size / sr
            errors.append(
                {
                    "id": uid,
                    "reason": "over_long",
                    "detail": f"{path}: {secs:.1f} s > {max_seconds}",
                }
            )
            continue
        manifest.append(
            {
                "id": uid,
                "audio": os.path.abspath(path),
                "text": text,
                "speaker": speaker,
                "num_samples": int(audio.size),
                "sample_rate": sr,
            }
        )
        yield (
            uid,
            {
                "id": uid,
                "audio": audio,
                "sample_rate": sr,
                "text": text,
                "speaker": speaker,
                "path": os.path.abspath(path),
            },
        )


def _text_examples(files: list[str], errors: list[dict], max_chars: int) -> Iterator[tuple]:
    seen: set[str] = set()
    for path in files:
        is_txt = path.endswith(".txt")
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                where = f"{path}:{n}"
                raw = raw.rstrip(b"\r\n")
                if is_txt and not raw.strip():
                    continue  # blank lines separate paragraphs
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    errors.append({"id": where, "reason": "undecodable", "detail": str(e)})
                    continue
                if is_txt:
                    uid, text = where, line
                else:
                    try:
                        obj = json.loads(line)
                        text = obj["text"]
                        uid = str(obj.get("id", where))
                    except (ValueError, KeyError, TypeError) as e:
                        errors.append({"id": where, "reason": "bad_json", "detail": repr(e)})
                        continue
                if not isinstance(text, str) or not text.strip():
                    errors.append({"id": uid, "reason": "empty_text", "detail": where})
                    continue
                if len(text) > max_chars:
                    errors.append(
                        {"id": uid, "reason": "over_long", "detail": f"{len(text)} characters"}
                    )
                    continue
                if uid in seen:
                    errors.append({"id": uid, "reason": "duplicate_id", "detail": where})
                    continue
                seen.add(uid)
                yield uid, {"id": uid, "text": text}


def _make_builder_class(name: str, kind: str, splits: Mapping, options: Mapping):
    """A GeneratorBasedBuilder subclass named ``name`` (not registered globally)."""
    tfds = _tfds()
    # lazy: TFDS takes seconds to import; only TFDS inputs need it
    from tensorflow_datasets.core import registered

    speech = kind != "text"

    with registered.skip_registration():  # builders are built by name, never looked up

        class _Builder(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version(VERSION)

            def __init__(self, **kwargs):
                self.errors: dict[str, list[dict]] = {s: [] for s in splits}
                self.manifests: dict[str, list[dict]] = {s: [] for s in splits}
                super().__init__(**kwargs)

            def _info(self):
                f = tfds.features
                feats = {"id": f.Text(), "text": f.Text()}
                if speech:
                    feats.update(
                        audio=f.Tensor(shape=(None,), dtype=np.int16, encoding=f.Encoding.ZLIB),
                        sample_rate=f.Scalar(dtype=np.int32),
                        speaker=f.Text(),
                        path=f.Text(),
                    )
                return tfds.core.DatasetInfo(
                    builder=self,
                    description=f"Local {kind} corpus.",
                    features=f.FeaturesDict(feats),
                )

            def _split_generators(self, dl_manager):
                del dl_manager
                return {s: self._generate_examples(s) for s in splits}

            def _generate_examples(self, split):
                errors = self.errors[split]
                if kind == "text":
                    yield from _text_examples(splits[split], errors, options["max_chars"])
                    return
                items = splits[split]
                if kind == "manifest":
                    items = manifest_items(items, errors)
                yield from _speech_examples(
                    items,
                    errors,
                    self.manifests[split],
                    options["sample_rate"],
                    options["max_seconds"],
                )

        camel = "".join(p.capitalize() for p in name.split("_"))
        # code_path = None: no checksums file next to the code (TFDS would look it up through
        # importlib_resources, which a plain install lacks); these builders download nothing.
        attrs = {"name": name, "__module__": __name__, "code_path": None}
        return type(camel, (_Builder,), attrs)


def build(
    kind: str,
    src: str | Mapping[str, str],
    data_dir: str,
    name: str,
    *,
    sample_rate: int | None = None,
    max_seconds: float = 600.0,
    max_chars: int = 10_000_000,
) -> str:
    """Builds (or reuses) a dataset; returns its version folder DATA_DIR/NAME/1.0.0.

    Args:
      kind: one of KINDS.
      src: librispeech: the root folder; manifest / text: ``{split: path or glob}`` or one
        path / glob (split "train"); a string "train=a.jsonl,test=b.jsonl" also works.
      data_dir: TFDS data dir.
      name: dataset name (lowercase snake_case).
      sample_rate: resample audio to this rate (default: keep each file's rate).
      max_seconds: longer audio is skipped (listed).
      max_chars: longer text documents are skipped (listed).

    Raises:
      ValueError: unknown kind, bad name, or inputs that match nothing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not _NAME_RE.match(name):
        raise ValueError(f"dataset name {name!r} must be lowercase snake_case, e.g. 'my_corpus'")
    if kind == "librispeech":
        if not isinstance(src, str):
            raise ValueError("librispeech: src must be the root folder")
        splits: dict = librispeech_splits(src)
    else:
        if isinstance(src, str):
            parts = [p for p in src.split(",") if p]
            src = dict(p.split("=", 1) if "=" in p else ("train", p) for p in parts)
        splits = {}
        for split, pattern in src.items():
            files = sorted(glob.glob(os.path.expanduser(pattern)))
            if not files:
                raise ValueError(f"split {split!r}: {pattern!r} matches no file")
            if kind == "manifest":
                if len(files) != 1:
                    raise ValueError(f"split {split!r}: give one manifest file, got {files}")
                splits[split] = files[0]
            else:
                splits[split] = files
    tfds = _tfds()
    options = {"sample_rate": sample_rate, "max_seconds": max_seconds, "max_chars": max_chars}
    builder = _make_builder_class(name, kind, splits, options)(
        data_dir=data_dir, file_format="array_record"
    )
    version_dir = builder.data_dir
    done = os.path.join(version_dir, "sidecars.done")
    if os.path.isfile(os.path.join(version_dir, "dataset_info.json")):
        if not os.path.exists(done):
            raise ValueError(
                f"{version_dir} was built but its manifest / errors files were not written (the "
                "build was killed at the very end); delete the folder and build again"
            )
        return version_dir  # already built
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    for split in splits:
        with open(os.path.join(version_dir, f"errors.{split}.jsonl"), "w", encoding="utf-8") as f:
            for e in builder.errors[split]:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        if kind != "text":
            path = os.path.join(version_dir, f"manifest.{split}.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                for m in builder.manifests[split]:
                    f.write(json.dumps(m, ensure_ascii=False) + "\n")
    with open(done, "w") as f:
        f.write("ok\n")
    return version_dir
