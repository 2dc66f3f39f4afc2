r"""Hugging Face corpora for the offline jobs: parquet / arrow text, MLS and Emilia speech.

Why: the corpora a pre-training user has come from the Hub, in the Hub's layouts. This module
turns them into the inputs the existing jobs read, so every record still goes through the
same deterministic, resumable, per-shard-error jobs (docs/corpora_at_scale.md):

* ``TableCorpus``: parquet / arrow files (FineWeb's ``data/CC-MAIN-*/0*.parquet``, a
  ``save_to_disk`` folder's ``data-*.arrow``) as an indexed corpus, like ``corpus_io.LineCorpus``;
  ``corpus_io.open_corpus`` hands it globs of such files, so ``text_records`` reads FineWeb-style
  text directly (``--input 'fineweb/data/*/*.parquet'``). Only the scalar columns are read (the
  text, its id and metadata), by row group, so a job shard touches only its own rows.
* ``mls_manifest``: Multilingual LibriSpeech, either as on the Hub
  (``facebook/multilingual_librispeech``: ``LANGUAGE/SPLIT-0000k-of-0000n.parquet`` with an
  ``audio`` struct {bytes, path}, ``transcript``, ``speaker_id``, ``id``, ...) or as released on
  OpenSLR (``mls_LANGUAGE/SPLIT/transcripts.txt`` of "ID<TAB>text" lines and
  ``SPLIT/audio/SPEAKER/BOOK/ID.flac|.opus``).
* ``emilia_manifest``: Emilia / Emilia-YODAS as on the Hub (``amphion/Emilia-Dataset``:
  ``LANG/LANG-B00000k.tar`` WebDataset archives of ``KEY.mp3`` + ``KEY.json`` with id, text,
  speaker, language, duration, dnsmos), with an optional DNSMOS floor.

The two speech recipes write ``manifest.jsonl`` ({"id", "audio", "text", "speaker"}, audio paths
relative to it; the audio bytes extracted as they are, never re-encoded) plus
``manifest.errors.jsonl`` for the inputs skipped, i.e. the input of ``build_tfds --kind manifest``
and ``glmvoice-tokenize``. The manifest is written under a temporary name and renamed when
complete, and extracted files of the right size are kept, so a killed run reruns to the same
bytes.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from glmvoice_jax.corpora import corpus_io
from glmvoice_jax.data.input import hf_sources

TABLE_SUFFIXES = (".parquet", ".arrow")
MANIFEST = "manifest.jsonl"
ERRORS = "manifest.errors.jsonl"
_AUDIO_MAGIC = ((b"fLaC", ".flac"), (b"RIFF", ".wav"), (b"OggS", ".opus"), (b"ID3", ".mp3"))


def is_table_spec(spec: str) -> bool:
    """True when every comma-separated pattern of ``spec`` names parquet / arrow files."""
    parts = [p for p in spec.split(",") if p]
    return bool(parts) and all(p.endswith(TABLE_SUFFIXES) for p in parts)


def _scalar(kind: pa.DataType) -> bool:
    """Text and number columns: what a text job reads (audio / nested columns are left alone)."""
    checks = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)
    return any(c(kind) for c in checks + (pa.types.is_floating, pa.types.is_boolean))


def _files(patterns: str | Sequence[str]) -> list[str]:
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p]
    files: set[str] = set()
    for p in patterns:
        found = [f for f in glob.glob(os.path.expanduser(p), recursive=True) if os.path.isfile(f)]
        if not found:
            raise ValueError(f"input pattern {p!r} matches no file")
        files.update(found)
    return sorted(files)


class TableCorpus:
    """Rows of parquet / arrow files (globs, sorted) as one indexed sequence of items.

    Items are ``corpus_io.Item``s: ``fields`` holds the row's string and number columns, ``id``
    its "id" column when there is one (else ``file:row``).
    """

    def __init__(self, patterns: str | Sequence[str]):
        self.files = _files(patterns)
        self._sources = []
        for path in self.files:
            fmt = "parquet" if path.endswith(".parquet") else "arrow"
            schema = (
                pq.read_schema(path) if fmt == "parquet" else hf_sources.read_arrow(path).schema
            )
            columns = [f.name for f in schema if _scalar(f.type)]
            self._sources.append((path, fmt, columns))
        self._counts = [self._rows(path, fmt) for path, fmt, _ in self._sources]
        self._starts = [sum(self._counts[:i]) for i in range(len(self._counts))]

    @staticmethod
    def _rows(path: str, fmt: str) -> int:
        if fmt == "parquet":
            return pq.ParquetFile(path).metadata.num_rows
        return hf_sources.read_arrow(path).num_rows

    def __len__(self) -> int:
        return sum(self._counts)

    def _batches(self, f: int, lo: int, hi: int) -> Iterator[tuple[int, dict]]:
        """(row, fields) of rows [lo, hi) of file f, reading only the row groups they are in."""
        path, fmt, columns = self._sources[f]
        if fmt == "arrow":
            table = hf_sources.read_arrow(path).select(columns).slice(lo, hi - lo)
            for k, row in enumerate(table.to_pylist()):
                yield lo + k, row
            return
        pf = pq.ParquetFile(path)
        start = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if start + n > lo and start < hi:
                rows = pf.read_row_group(g, columns=columns).to_pylist()
                for k in range(max(lo, start), min(hi, start + n)):
                    yield k, rows[k - start]
            start += n

    def iter_range(self, r: range) -> Iterator[corpus_io.Item]:
        for f, (path, _, _) in enumerate(self._sources):
            lo, hi = max(r.start, self._starts[f]), min(r.stop, self._starts[f] + self._counts[f])
            if lo >= hi:
                continue
            base = self._starts[f]
            for row, fields in self._batches(f, lo - base, hi - base):
                uid = fields.get("id")
                uid = uid if isinstance(uid, str) and uid else f"{path}:{row}"
                yield corpus_io.Item(base + row, uid, fields, None)


# --------------------------------------------------------------------------------------------
# Speech manifests
# --------------------------------------------------------------------------------------------


def _audio_suffix(data: bytes, name: str) -> str:
    ext = os.path.splitext(name or "")[1].lower()
    if ext in (".flac", ".wav", ".opus", ".ogg", ".mp3"):
        return ext
    for magic, suffix in _AUDIO_MAGIC:
        if data.startswith(magic):
            return suffix
    return ".mp3" if data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2") else ".bin"


def _put(path: str, data: bytes) -> None:
    """Writes ``data`` atomically; a file already there with the same size is kept."""
    if os.path.isfile(path) and os.path.getsize(path) == len(data):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".incomplete", "wb") as f:
        f.write(data)
    os.replace(path + ".incomplete", path)


class _Manifest:
    """manifest.jsonl + manifest.errors.jsonl in ``out_dir``, renamed into place when closed.

    Lines are written as they come (under the temporary names), so memory holds only the ids
    seen (for duplicates): ~100 bytes per utterance.
    """

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self._files = {
            # Closed by close(), which renames them into place; a crash leaves only *.incomplete.
            name: open(os.path.join(out_dir, name + ".incomplete"), "w", encoding="utf-8")  # noqa: SIM115
            for name in (MANIFEST, ERRORS)
        }
        self.counts = {MANIFEST: 0, ERRORS: 0}
        self.seen: set[str] = set()

    def _write(self, name: str, row: dict) -> None:
        self._files[name].write(json.dumps(row, ensure_ascii=False) + "\n")
        self.counts[name] += 1

    def error(self, uid: str, reason: str, detail: str) -> None:
        self._write(ERRORS, {"id": uid, "reason": reason, "detail": detail})

    def add(self, uid: str, audio: bytes, name: str, text: str, speaker: str, **extra) -> None:
        if uid in self.seen:
            self.error(uid, "duplicate_id", name)
            return
        self.seen.add(uid)
        if not audio:
            self.error(uid, "empty_audio", name)
            return
        if not text.strip():
            self.error(uid, "empty_text", name)
            return
        rel = os.path.join("audio", *uid.split("_")[:2], uid + _audio_suffix(audio, name))
        _put(os.path.join(self.out_dir, rel), audio)
        line = {"id": uid, "audio": rel, "text": text.strip(), "speaker": speaker}
        self._write(MANIFEST, line | extra)

    def close(self) -> tuple[str, int, int]:
        for name in (ERRORS, MANIFEST):  # the manifest last: its presence means done
            self._files[name].close()
            path = os.path.join(self.out_dir, name)
            os.replace(path + ".incomplete", path)
        return os.path.join(self.out_dir, MANIFEST), self.counts[MANIFEST], self.counts[ERRORS]


def _samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of a WebDataset tar, one sample in memory at a time.

    WebDataset keeps a sample's files next to each other; a key that comes back later is
    yielded again (and reported as a duplicate id).
    """
    key, parts = None, {}
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            k, _, ext = m.name.rpartition(".")
            if k != key and parts:
                yield key, parts
                parts = {}
            key = k
            parts[ext] = tar.extractfile(m).read()
    if parts:
        yield key, parts


def mls_manifest(src: str, out_dir: str, split: str = "train") -> tuple[str, int, int]:
    """Writes the manifest of one MLS split; returns (manifest path, utterances, skipped).

    Args:
      src: a Hub MLS language folder (``.../multilingual_librispeech/polish``, read as
        ``SPLIT-*.parquet``), a glob of such parquet files, or an OpenSLR ``mls_LANGUAGE``
        folder (``SPLIT/transcripts.txt`` + ``SPLIT/audio``).
      out_dir: where the manifest, its errors and the extracted audio go.
      split: train / dev / test (or 1_hours / 9_hours on the Hub).

    Raises:
      ValueError: ``src`` is in neither layout.
    """
    man = _Manifest(out_dir)
    openslr = os.path.join(src, split, "transcripts.txt")
    if os.path.isfile(openslr):
        audio_root = os.path.join(src, split, "audio")
        with open(openslr, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                uid, _, text = line.rstrip("\n").partition("\t")
                parts = uid.split("_")
                if len(parts) != 3 or not text:
                    where = f"{openslr}:{n}"
                    man.error(where, "bad_line", line[:200])
                    continue
                found = [
                    p
                    for ext in (".flac", ".opus", ".wav")
                    if os.path.isfile(p := os.path.join(audio_root, *parts[:2], uid + ext))
                ]
                if not found:
                    man.error(uid, "no_audio", audio_root)
                    continue
                with open(found[0], "rb") as a:
                    man.add(uid, a.read(), found[0], text, parts[0])
        return man.close()
    pattern = src if src.endswith(".parquet") else os.path.join(src, f"{split}-*.parquet")
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(
            f"MLS source {src!r}: neither an OpenSLR folder ({openslr} missing) nor Hub parquet "
            f"files ({pattern} matches nothing)"
        )
    for path in files:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        need = {"audio", "transcript", "id"} - set(names)
        if need:
            raise ValueError(f"{path}: not an MLS parquet file, missing columns {sorted(need)}")
        columns = ["id", "audio", "transcript"] + (["speaker_id"] if "speaker_id" in names else [])
        for batch in pf.iter_batches(64, columns=columns):  # 64 utterances of audio at a time
            for row in batch.to_pylist():
                audio = row["audio"] or {}
                man.add(
                    str(row["id"]),
                    audio.get("bytes") or b"",
                    audio.get("path") or path,
                    row["transcript"] or "",
                    str(row.get("speaker_id", "")),
                )
    return man.close()


def emilia_manifest(src: str, out_dir: str, min_dnsmos: float = 0.0) -> tuple[str, int, int]:
    """Writes the manifest of Emilia WebDataset tars; returns (path, utterances, skipped).

    Args:
      src: a glob (or comma-separated globs) of ``LANG-B00000k.tar`` archives.
      out_dir: where the manifest, its errors and the extracted mp3 files go.
      min_dnsmos: utterances whose DNSMOS is below it are skipped (listed as low_dnsmos).
    """
    man = _Manifest(out_dir)
    for path in _files(src):
        for key, parts in _samples(path):
            where = f"{path}:{key}"
            try:
                meta = json.load(io.BytesIO(parts["json"]))
                audio_ext = next(e for e in ("mp3", "wav", "flac", "opus") if e in parts)
            except (KeyError, StopIteration, ValueError) as e:
                man.error(where, "bad_sample", repr(e))
                continue
            uid = str(meta.get("id") or os.path.basename(key))
            if float(meta.get("dnsmos", 5.0)) < min_dnsmos:
                man.error(uid, "low_dnsmos", str(meta["dnsmos"]))
                continue
            extra = {k: meta[k] for k in ("language", "duration", "dnsmos") if k in meta}
            man.add(
                uid,
                parts[audio_ext],
                f"{key}.{audio_ext}",
                str(meta.get("text") or ""),
                str(meta.get("speaker", "")),
                **extra,
            )
    return man.close()
