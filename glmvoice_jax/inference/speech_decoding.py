"""Speech tokens → waveform files: the library behind ``glmvoice-decode``.

Ref: decoder.md §18 (output contract), §12 (streaming schedule), §14 (deterministic mode);
house_style.md §12. Input: JSONL lines ``{"id": str, "tokens": [int, ...]}`` (codebook indices).
Output per good line: ``DIR/<id>.wav`` (mono float32 WAV at the vocoder's rate, 22050 Hz) and,
on request, ``DIR/<id>.mel.npy`` (float32 [80, T], the mel whose audio the wav is). Bad lines
are skipped and listed in ``DIR/errors.jsonl`` (always rewritten; empty when all lines decode):
one JSON object ``{"line", "id", "error"}`` per skipped line, written as soon as it fails.

Files appear complete or not at all: each is written under a ``.partial`` name and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import soundfile as sf

from glmvoice_jax import progress as progress_lib
from glmvoice_jax.models.speech_decoder.speech_decoder import (
    FAST_MODE,
    SpeechDecoder,
    tokens_to_audio,
)
from glmvoice_jax.models.speech_decoder.stream import (
    STREAMING_FAST_MODE,
    Chunk,
    emitted_mel,
    stream_decode,
)

NOISE_MODES = ("random", "zeros")
ERRORS_FILE = "errors.jsonl"
# Tokens per line decoded in one pass (~160 s of speech at 12.5 Hz). The one-pass decoder's
# memory grows with the square of the length: 5,000 tokens tried to allocate 47 GB. Longer
# lines are skipped and listed; --streaming decodes them in bounded chunks.
MAX_TOKENS = 2000
_MAX_ID_CHARS = 200


@dataclasses.dataclass(frozen=True)
class Request:
    """One valid input line."""

    line: int  # 1-based line number in the input file
    id: str
    tokens: np.ndarray  # (N,) int32, every id in [0, vocab_size)


@dataclasses.dataclass(frozen=True)
class LineError:
    """One skipped input line (a row of errors.jsonl)."""

    line: int
    id: str | None
    error: str


@dataclasses.dataclass(frozen=True)
class Result:
    """One decoded utterance."""

    line: int
    id: str
    tokens: int
    samples: int
    wall_secs: float  # compile included for the first utterance of each shape
    first_chunk_secs: float | None = None  # streaming only: time to the first emitted audio
    chunks: tuple[Chunk, ...] = ()


@dataclasses.dataclass
class Report:
    """What ``decode_file`` did."""

    output_dir: str
    sample_rate: int
    lines: int = 0
    results: list[Result] = dataclasses.field(default_factory=list)
    errors: list[LineError] = dataclasses.field(default_factory=list)

    @property
    def audio_secs(self) -> float:
        return sum(r.samples for r in self.results) / self.sample_rate

    @property
    def wall_secs(self) -> float:
        return sum(r.wall_secs for r in self.results)


def _check_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f'"id" must be a string (or an integer), got {type(value).__name__}')
    uid = str(value)
    bad = (
        not uid
        or len(uid) > _MAX_ID_CHARS
        or uid.startswith(".")
        or any(c in uid for c in "/\\\0")
        or not uid.isprintable()
    )
    if bad:
        raise ValueError(
            f'"id" {uid!r} cannot name an output file: it must be 1..{_MAX_ID_CHARS} printable '
            "characters, not start with '.', and contain no '/', '\\' or NUL"
        )
    return uid


def _check_tokens(value: Any, vocab_size: int, max_tokens: int | None = None) -> np.ndarray:
    if not isinstance(value, list):
        raise ValueError(f'"tokens" must be a list of integers, got {type(value).__name__}')
    if not value:
        raise ValueError('"tokens" is empty: the decoder needs at least one speech token')
    if max_tokens is not None and len(value) > max_tokens:
        raise ValueError(
            f"{len(value):,} tokens exceed the one-pass limit of {max_tokens:,} (memory grows "
            "with the square of the length); split the line, or decode with --streaming"
        )
    for pos, tok in enumerate(value):
        if isinstance(tok, bool) or not isinstance(tok, int):
            raise ValueError(f'"tokens"[{pos}] = {tok!r} is not an integer codebook index')
    bad = [(pos, tok) for pos, tok in enumerate(value) if not 0 <= tok < vocab_size]
    if bad:
        pos, tok = bad[0]
        raise ValueError(
            f"token id {tok} at position {pos} is outside the codebook of size {vocab_size} "
            f"(valid ids: 0..{vocab_size - 1}; {len(bad)} bad id(s) on this line)"
        )
    return np.asarray(value, np.int32)


def parse_lines(
    path: str, vocab_size: int, max_tokens: int | None = None
) -> tuple[list[Request], list[LineError], int]:
    """Reads and validates a TOKENS.jsonl file; blank lines are ignored.

    Args:
      path: the JSONL file.
      vocab_size: codebook size; ids must lie in [0, vocab_size).
      max_tokens: a longer line is an error of that line (None: no cap).

    Returns:
      (valid requests, errors of the other lines, number of non-blank lines).

    Raises:
      FileNotFoundError: ``path`` does not exist.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input {path} does not exist or is not a file")
    requests: list[Request] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    count = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            count += 1
            uid = None
            try:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ValueError(f"not valid JSON ({e.msg} at character {e.pos})") from None
                if not isinstance(obj, dict) or "tokens" not in obj or "id" not in obj:
                    raise ValueError('expected a JSON object {"id": ..., "tokens": [...]}')
                uid = _check_id(obj["id"])
                if uid in seen:
                    raise ValueError(
                        f"id {uid!r} repeats line {seen[uid]}; ids name the output files and "
                        "must be unique"
                    )
                tokens = _check_tokens(obj["tokens"], vocab_size, max_tokens)
            except ValueError as e:
                where = f"line {number}" + ("" if uid is None else f" (id {uid!r})")
                errors.append(LineError(number, uid, f"{where}: {e}"))
                continue
            seen[uid] = number
            requests.append(Request(number, uid, tokens))
    return requests, errors, count


class _ErrorLog:
    """errors.jsonl, truncated at start and appended (flushed) as lines fail."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def add(self, err: LineError) -> None:
        self.file.write(json.dumps(dataclasses.asdict(err)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _save_mel(path: str, mel_mt: np.ndarray) -> None:
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(mel_mt, np.float32))
    os.replace(tmp, path)


def _finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise FloatingPointError(
            f"the decoder produced non-finite {what} values; the checkpoint may be corrupt"
        )


def _decode_whole(
    model: SpeechDecoder,
    req: Request,
    out: str,
    key: jax.Array | None,
    save_mel: bool,
    fast: bool = False,
) -> Result:
    start = time.perf_counter()
    options = FAST_MODE if fast else {}
    mel, wav = tokens_to_audio(model, req.tokens, key=key, **options)  # (M, T), (L,)
    wall = time.perf_counter() - start
    _finite(wav, "audio")
    tmp = os.path.join(out, f"{req.id}.wav.partial")
    sf.write(tmp, wav, model.config.hift.sampling_rate, subtype="FLOAT", format="WAV")
    os.replace(tmp, os.path.join(out, f"{req.id}.wav"))
    if save_mel:
        _save_mel(os.path.join(out, f"{req.id}.mel.npy"), mel)
    return Result(req.line, req.id, int(req.tokens.size), int(wav.size), wall)


def _decode_streaming(
    model: SpeechDecoder,
    req: Request,
    out: str,
    key: jax.Array | None,
    save_mel: bool,
    fast: bool = False,
) -> Result:
    tmp = os.path.join(out, f"{req.id}.wav.partial")
    mels: list[np.ndarray] = []
    first: list[float] = []
    samples = 0
    start = time.perf_counter()
    with sf.SoundFile(
        tmp, "w", model.config.hift.sampling_rate, 1, subtype="FLOAT", format="WAV"
    ) as wav_file:

        def on_chunk(speech: np.ndarray, mel: np.ndarray, chunk: Chunk) -> None:
            nonlocal samples
            if not first:
                first.append(time.perf_counter() - start)
            _finite(speech, "audio")
            wav_file.write(speech)  # emitted as soon as the chunk is vocoded
            wav_file.flush()
            samples += speech.size
            mels.append(emitted_mel(mel, chunk))

        options = STREAMING_FAST_MODE if fast else {}
        _, chunks = stream_decode(model, req.tokens, key=key, on_chunk=on_chunk, **options)
        wall = time.perf_counter() - start
    os.replace(tmp, os.path.join(out, f"{req.id}.wav"))
    if save_mel:
        _save_mel(os.path.join(out, f"{req.id}.mel.npy"), np.concatenate(mels).T)
    return Result(req.line, req.id, int(req.tokens.size), samples, wall, first[0], tuple(chunks))


def decode_file(
    model: SpeechDecoder,
    input_path: str,
    output_dir: str,
    *,
    noise: str = "random",
    seed: int = 0,
    save_mel: bool = False,
    streaming: bool = False,
    fast: bool = False,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Decodes every valid line of ``input_path``; bad lines go to ``output_dir/errors.jsonl``.

    Args:
      model: the decoder.
      input_path: TOKENS.jsonl.
      output_dir: created if missing; existing files of the same ids are replaced.
      noise: "random" (flow noise, NSF phases and noise from PRNG key fold_in(seed, line)) or
        "zeros" (the deterministic mode of decoder.md §14).
      seed: seed of the random mode.
      save_mel: also write ``<id>.mel.npy`` [M, T].
      streaming: use the web_demo chunk schedule (25, 50, 100, 150, then 200 tokens) and write
        each chunk's audio as soon as it exists; the mel is then the streamed one.
      fast: the opt-in fast preset (``FAST_MODE``: bf16 matmuls, 5 Euler steps; streaming takes
        4 steps and a 25-token history, ``STREAMING_FAST_MODE``); its distance from exact is in
        docs/decoder_speed.md.
      log: progress sink, e.g. ``print``; None → silent.

    Returns:
      A ``Report``; ``report.errors`` lists the skipped lines.

    Raises:
      ValueError: unknown ``noise`` mode.
      FileNotFoundError: ``input_path`` is missing.
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
    vocab = model.config.flow.vocab_size
    requests, bad, count = parse_lines(input_path, vocab, None if streaming else MAX_TOKENS)
    os.makedirs(output_dir, exist_ok=True)
    report = Report(output_dir, model.config.hift.sampling_rate, lines=count)
    errors = _ErrorLog(os.path.join(output_dir, ERRORS_FILE))
    say = log or (lambda _: None)
    pending = sorted(
        [(e.line, e) for e in bad] + [(r.line, r) for r in requests], key=lambda x: x[0]
    )
    bar = progress_lib.bar(count, "decode", "line", enabled=log is not None)
    try:
        for i, (_, item) in enumerate(pending, start=1):
            bar.update(1)
            prefix = f"[{i}/{count}]"
            if isinstance(item, LineError):
                report.errors.append(item)
                errors.add(item)
                say(f"{prefix} skipped {item.error}")
                continue
            key = None if noise == "zeros" else jax.random.fold_in(jax.random.key(seed), item.line)
            decode = _decode_streaming if streaming else _decode_whole
            try:
                result = decode(model, item, output_dir, key, save_mel, fast)
            except (ValueError, FloatingPointError, RuntimeError, OSError) as e:
                for suffix in (".wav.partial", ".mel.npy.partial"):
                    partial = os.path.join(output_dir, item.id + suffix)
                    if os.path.exists(partial):
                        os.remove(partial)
                err = LineError(item.line, item.id, f"line {item.line} (id {item.id!r}): {e}")
                report.errors.append(err)
                errors.add(err)
                say(f"{prefix} failed {err.error}")
                continue
            report.results.append(result)
            say(f"{prefix} {_describe(result, report.sample_rate)}")
    finally:
        errors.close()
        bar.close()
    return report


def _describe(r: Result, sample_rate: int) -> str:
    audio = r.samples / sample_rate
    text = (
        f"{r.id}: {r.tokens} tokens -> {audio:.2f} s of audio in {r.wall_secs:.2f} s "
        f"(RTF {r.wall_secs / max(audio, 1e-9):.2f})"
    )
    if r.first_chunk_secs is not None:
        text += f", {len(r.chunks)} chunks, first chunk after {r.first_chunk_secs:.3f} s"
    return text


def summary(report: Report) -> str:
    """A few lines for the end of a run: counts, speed, and first-chunk latency if streamed."""
    audio, wall = report.audio_secs, report.wall_secs
    lines = [
        f"decoded {len(report.results)}/{report.lines} lines -> {report.output_dir}: "
        f"{audio:.2f} s of audio in {wall:.2f} s (RTF {wall / max(audio, 1e-9):.2f}, "
        "compile included)"
    ]
    latencies = [r.first_chunk_secs for r in report.results if r.first_chunk_secs is not None]
    if latencies:
        later = latencies[1:]
        text = f"first-chunk latency: {latencies[0]:.3f} s for the first utterance (with compile)"
        if later:
            text += f", median {float(np.median(later)):.3f} s over the {len(later)} others"
        lines.append(text)
    if report.errors:
        lines.append(
            f"{len(report.errors)} line(s) skipped, listed in "
            f"{os.path.join(report.output_dir, ERRORS_FILE)}; first: {report.errors[0].error}"
        )
    return "\n".join(lines)
