"""The file-level tokenizing job behind ``glmvoice-tokenize``: audio files -> speech tokens.

Inputs (``list_inputs``): one audio file, a directory (searched recursively for audio files), or
a manifest JSONL ``{"id", "audio"}`` (relative audio paths are taken from the manifest's folder).

Work is cut into output *parts* of ``files_per_part`` consecutive inputs; process p of P does the
parts i with i % P == p, each on its local devices (``speech_tokenization.local_mesh``: every batch
of
30 s windows, bucketed by length, is split over them). A part is written to a temporary name and
renamed when complete, so a rerun skips finished parts and redoes only the rest (resumable).
Unreadable, empty, NaN/Inf, silent or too long (``MAX_AUDIO_SECONDS``) audio is skipped and
listed with the reason in an errors file; a part holds at most ``GROUP_SECONDS`` of decoded audio
at once. Outputs:

* ``jsonl``: parts under ``OUT.parts/``; when all exist, process 0 joins them into OUT
  (``{"id", "tokens"}`` lines, inputs order) and OUT.errors.jsonl (``{"id", "audio", "reason"}``).
* ``array_record``: OUT is a directory of ``speech-XXXXX-of-YYYYY.array_record`` shards of
  speech-only examples in the record schema (``records.py``):
  [gMASK]<sop><|begin_of_audio|> codes <|end_of_audio|>, loss on every token (glm4voice.md §12
  #14), ids from the named token layout; errors in OUT/errors.jsonl.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np
import soundfile
from jax.experimental import multihost_utils

from glmvoice_jax import audio, files
from glmvoice_jax import progress as progress_lib
from glmvoice_jax.data import records, token_layout
from glmvoice_jax.inference import speech_tokenization

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".aiff", ".aif")
FORMATS = ("jsonl", "array_record")
# Longest file tokenized (4 h: 0.9 GB of 16 kHz float32 once decoded, more while resampling). A
# longer one is skipped and listed before it is decoded (from its header where soundfile reads
# it): a 10 h recording would take several GB at once. Split it (e.g. sox IN OUT trim 0 3600 :
# newfile : restart).
MAX_AUDIO_SECONDS = 4 * 3600
# Decoded audio held at once within a part (2 h): a part's files are tokenized in groups of at
# most this much, so host memory does not grow with --files_per_part x file length.
GROUP_SECONDS = 2 * 3600


def list_inputs(path: str) -> list[tuple[str, str]]:
    """(id, audio path) pairs of an audio file, a directory of them, or a manifest JSONL.

    Raises:
      FileNotFoundError / ValueError: naming the path or manifest line.
    """
    if os.path.isdir(path):
        found = sorted(
            f
            for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
            if f.lower().endswith(AUDIO_EXTENSIONS) and os.path.isfile(f)
        )
        if not found:
            raise ValueError(
                f"directory {path} holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"
            )
        return [(os.path.splitext(os.path.relpath(f, path))[0], f) for f in found]
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input {path} does not exist")
    if not path.endswith(".jsonl"):
        return [(os.path.splitext(os.path.basename(path))[0], path)]
    base, out, seen = os.path.dirname(os.path.abspath(path)), [], set()
    for _, where, row in files.objects(path):
        if not isinstance(row.get("id"), str | int) or not isinstance(row.get("audio"), str):
            raise ValueError(f'{where}: need "id" (string or integer) and "audio" (a path)')
        uid, wav = str(row["id"]), os.path.join(base, row["audio"])
        if uid in seen:
            raise ValueError(f"{where}: duplicate id {uid!r}")
        seen.add(uid)
        out.append((uid, wav))
    if not out:
        raise ValueError(f"manifest {path} lists no audio")
    return out


def _too_long(seconds: float) -> str:
    return (
        f"too long: {seconds / 3600:.2f} h of audio, over the {MAX_AUDIO_SECONDS / 3600:g} h a "
        "file may last (memory); split it (e.g. sox IN OUT trim 0 3600 : newfile : restart)"
    )


def load_checked(path: str, silence_peak: float) -> tuple[np.ndarray | None, str | None]:
    """(16 kHz waveform, None), or (None, reason) for audio that cannot be tokenized."""
    try:
        info = soundfile.info(path)
    except Exception:  # noqa: BLE001 - not readable by soundfile: load_audio tries librosa
        info = None
    if (
        info is not None
        and info.samplerate > 0
        and info.frames / info.samplerate > MAX_AUDIO_SECONDS
    ):
        return None, _too_long(info.frames / info.samplerate)
    try:
        wav = audio.load_audio(path)
    except ValueError as e:
        return None, str(e)
    if wav.size > MAX_AUDIO_SECONDS * audio.SAMPLE_RATE:
        return None, _too_long(wav.size / audio.SAMPLE_RATE)
    peak = float(np.max(np.abs(wav)))
    if peak < silence_peak:
        return None, f"silent: peak amplitude {peak:.2e} < --silence_peak {silence_peak:g}"
    return wav, None


def tokenize_files(
    checkpoint: str,
    input_path: str,
    output: str,
    *,
    output_format: str = "jsonl",
    files_per_part: int = 256,
    batch_size: int = 16,
    silence_peak: float = 1e-4,
    layout_name: str = "glm4_voice",
    source_name: str = "speech",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Runs (or resumes) the job; returns counts and timings of this process's share.

    Raises:
      ValueError: unknown format, a codebook larger than the layout's speech vocabulary, or
        leftover parts of a different job at the output.
    """
    if output_format not in FORMATS:
        raise ValueError(f"--output_format {output_format!r} must be one of {FORMATS}")
    inputs = list_inputs(input_path)
    num_parts = -(-len(inputs) // files_per_part)
    pid, nproc = jax.process_index(), jax.process_count()
    layout = token_layout.get(layout_name) if output_format == "array_record" else None
    if output_format == "jsonl":
        part_dir, ext = output + ".parts", ".jsonl"
        errors_out = output + ".errors.jsonl"
    else:
        part_dir, ext = output, ".array_record"
        errors_out = os.path.join(output, "errors.jsonl")
    os.makedirs(part_dir, exist_ok=True)
    job = {"inputs": len(inputs), "files_per_part": files_per_part, "format": output_format}
    job_path = os.path.join(part_dir, "job.json")
    if os.path.exists(job_path):
        with open(job_path) as f:
            if json.load(f) != job:
                raise ValueError(
                    f"{part_dir} holds parts of another job (job.json differs from {job}); "
                    "delete it or choose another --output"
                )
    elif pid == 0:
        files.write_jsonl(job_path, [job])

    def part_path(i: int) -> str:
        prefix = "part" if output_format == "jsonl" else "speech"
        return os.path.join(part_dir, f"{prefix}-{i:05d}-of-{num_parts:05d}{ext}")

    mine = [i for i in range(num_parts) if i % nproc == pid]
    todo = [i for i in mine if not os.path.exists(part_path(i))]
    log(f"{len(inputs)} inputs in {num_parts} parts; this process: {len(mine)} parts, "
        f"{len(mine) - len(todo)} already done")  # fmt: skip
    stats = {"files": 0, "skipped": 0, "audio_secs": 0.0, "seconds": 0.0, "parts": len(todo)}
    if todo:
        mesh = speech_tokenization.local_mesh()
        cfg, model = speech_tokenization.load_model(checkpoint, mesh)
        if layout is not None and cfg.codebook_size > layout.num_audio_tokens:
            raise ValueError(
                f"the tokenizer has {cfg.codebook_size} codes but token layout {layout.name!r} "
                f"has {layout.num_audio_tokens} speech ids; choose a --token_layout that fits"
            )
    total_files = sum(len(inputs[i * files_per_part : (i + 1) * files_per_part]) for i in todo)
    bar = progress_lib.bar(total_files, "tokenize", "file", enabled=progress)
    for done, i in enumerate(todo, 1):
        t0 = time.time()
        chunk = inputs[i * files_per_part : (i + 1) * files_per_part]
        wavs, ok, errors, tokens = [], [], [], []
        secs = 0.0

        for uid, path in chunk:
            wav, reason = load_checked(path, silence_peak)
            if reason is None:
                if sum(w.shape[0] for w in wavs) + wav.shape[0] > GROUP_SECONDS * audio.SAMPLE_RATE:
                    tokens += _tokenize_group(model, wavs, batch_size, mesh)
                wavs.append(wav)
                ok.append(uid)
                secs += wav.shape[0] / audio.SAMPLE_RATE
            else:
                errors.append({"id": uid, "audio": path, "reason": reason})
        tokens += _tokenize_group(model, wavs, batch_size, mesh)
        files.write_jsonl(part_path(i) + ".errors", errors)
        if layout is None:
            files.write_jsonl(
                part_path(i), [{"id": u, "tokens": t.tolist()} for u, t in zip(ok, tokens)]
            )
        else:
            with records.ShardWriter(part_path(i)) as writer:  # atomic by itself
                for t in tokens:
                    ids = np.concatenate([layout.bos_ids, layout.wrap_audio(t)])
                    writer.write(records.Example(ids, np.ones_like(ids), source_name, "speech"))
        dt = time.time() - t0
        stats["files"] += len(ok)
        stats["skipped"] += len(errors)
        stats["audio_secs"] += secs
        stats["seconds"] += dt
        bar.update(len(chunk))
        log(f"part {i} ({done}/{len(todo)}): {len(ok)} files, {len(errors)} skipped, "
            f"{secs / 3600:.4f} audio-h in {dt:.1f} s = {secs / 3600 / max(dt, 1e-9):.2e} "
            f"audio-h/s ({secs / max(dt, 1e-9):.1f}x realtime)")  # fmt: skip
    bar.close()
    if nproc > 1:
        multihost_utils.sync_global_devices("glmvoice-tokenize parts")
    if pid == 0:
        _finish(output, output_format, [part_path(i) for i in range(num_parts)], errors_out)
    return stats


def _tokenize_group(model, wavs: list[np.ndarray], batch_size: int, mesh) -> list[np.ndarray]:
    """Tokens of the waveforms held in memory; empties ``wavs`` so their memory can go."""
    if not wavs:
        return []
    out = speech_tokenization.tokenize_waveforms(model, wavs, batch_size=batch_size, mesh=mesh)
    wavs.clear()
    return out


def _finish(output: str, output_format: str, parts: list[str], errors_out: str) -> None:
    """Joins the parts (jsonl) and the error lists, once every part exists."""
    missing = [p for p in parts if not os.path.exists(p)]
    if missing:
        raise ValueError(f"{len(missing)} output parts are missing (e.g. {missing[0]}); rerun")
    errors = []
    for p in parts:
        with open(p + ".errors", encoding="utf-8") as f:
            errors += [json.loads(line) for line in f]
    files.write_jsonl(errors_out, errors)
    if output_format == "jsonl":
        with files.atomic(output) as tmp, open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    out.write(f.read())
