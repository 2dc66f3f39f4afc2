r"""The one record schema of pre-training data, and the ArrayRecord shards that hold it.

Every producer (the demo corpus, the text and speech tokenizing jobs, the interleaving job) writes
``Example``s through ``encode`` / ``ShardWriter``, and the input pipeline reads them back with
``decode``. Keeping the schema in one module means a format change is one edit plus a version bump,
and an old shard fails loudly instead of being misread.

Binary framing of one record (all little-endian; chosen so that decoding is two ``np.frombuffer``
views, no pickle and no JSON):

  offset  size  field
  0       4     magic b"GVR\x00"
  4       1     version (VERSION)
  5       1     kind, an index into KINDS
  6       2     n_source, bytes of the UTF-8 source name
  8       4     n_tokens = L
  12      4*L   tokens, int32
  12+4L   L     loss_mask, uint8 (0 or 1)
  12+5L   n_s   source name, UTF-8

The tokens come right after the 12-byte header, so the int32 view is 4-byte aligned.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import struct
from collections.abc import Sequence
from types import TracebackType

import numpy as np
from array_record.python import array_record_module

MAGIC = b"GVR\x00"
VERSION = 1
# Append only: a record stores the index. The sft_* kinds are the two copies of one dialogue
# (corpora/dialogue_records.py): loss on the reply's speech / on its text.
KINDS = ("text", "speech", "asr", "tts", "interleaved", "sft_speech", "sft_text")

_HEADER = struct.Struct("<4sBBHI")  # magic, version, kind, n_source, n_tokens
_TOKENS_DTYPE = np.dtype("<i4")
_MAX_SOURCE_BYTES = 0xFFFF
_INT32 = np.iinfo(np.int32)

# Suffix of a shard that is still being written; never matched as a shard.
TMP_SUFFIX = ".incomplete"


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
    """One training document.

    Attributes:
      tokens: int32 [L] token ids in the model's vocabulary (see ``token_layout``).
      loss_mask: uint8 [L]; 1 where the loss on predicting tokens[i] from tokens[:i] counts.
        Text, speech and interleaved documents set it everywhere; ASR / TTS samples only on their
        target part (glm4voice.md §7.3, §12 #14).
      source: corpus name, e.g. "fineweb_edu_en"; for error messages and statistics.
      kind: one of KINDS.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    source: str
    kind: str

    def __post_init__(self):
        tokens = np.asarray(self.tokens)
        mask = np.asarray(self.loss_mask)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError(
                f"Example.tokens must be a non-empty 1-D array, got shape {tokens.shape}"
            )
        if not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"Example.tokens must hold integers, got dtype {tokens.dtype}")
        if tokens.dtype != np.int32:
            if tokens.min() < _INT32.min or tokens.max() > _INT32.max:
                raise ValueError("Example.tokens must fit in int32")
            tokens = tokens.astype(np.int32)
        if mask.shape != tokens.shape:
            raise ValueError(
                f"Example.loss_mask shape {mask.shape} must equal tokens shape {tokens.shape}"
            )
        if mask.dtype != np.uint8:
            if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
                raise ValueError("Example.loss_mask must hold only 0 and 1")
            mask = mask.astype(np.uint8)
        if self.kind not in KINDS:
            raise ValueError(f"Example.kind {self.kind!r} must be one of {KINDS}")
        if len(self.source.encode("utf-8")) > _MAX_SOURCE_BYTES:
            raise ValueError(f"Example.source is longer than {_MAX_SOURCE_BYTES} UTF-8 bytes")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "loss_mask", mask)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return (
            self.source == other.source
            and self.kind == other.kind
            and np.array_equal(self.tokens, other.tokens)
            and np.array_equal(self.loss_mask, other.loss_mask)
        )

    __hash__ = None  # mutable numpy payload: not hashable


def encode(ex: Example) -> bytes:
    """Serialises an example to the versioned binary framing described in the module docstring."""
    source = ex.source.encode("utf-8")
    header = _HEADER.pack(MAGIC, VERSION, KINDS.index(ex.kind), len(source), ex.tokens.size)
    return b"".join(
        (
            header,
            ex.tokens.astype(_TOKENS_DTYPE, copy=False).tobytes(),
            ex.loss_mask.tobytes(),
            source,
        )
    )


def decode(data: bytes, *, where: str) -> Example:
    """Parses one record written by ``encode``.

    The arrays of the result are read-only views of ``data`` (no copy).

    Args:
      data: the record bytes.
      where: where the record came from, e.g. "shard /data/x.array_record record 12"; it starts
        every error message.

    Returns:
      The example.

    Raises:
      ValueError: bad magic, unknown version or kind, inconsistent lengths, or a loss_mask value
        other than 0/1.
    """
    if len(data) < _HEADER.size:
        raise ValueError(
            f"{where}: record is {len(data)} bytes, shorter than the {_HEADER.size}-byte header; "
            "the shard is corrupt or not a glmvoice_jax record shard"
        )
    magic, version, kind, n_source, n_tokens = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(
            f"{where}: bad magic {magic!r} (expected {MAGIC!r}); the shard was not written by "
            "glmvoice_jax.data.records.ShardWriter or is corrupt"
        )
    if version != VERSION:
        raise ValueError(
            f"{where}: record format version {version}, this code reads version {VERSION}; "
            "rewrite the shard with the current data_pipelines job"
        )
    if kind >= len(KINDS):
        raise ValueError(f"{where}: kind index {kind} is not in KINDS {KINDS}")
    expected = _HEADER.size + 5 * n_tokens + n_source
    if len(data) != expected or n_tokens == 0:
        raise ValueError(
            f"{where}: record is {len(data)} bytes but its header (n_tokens={n_tokens}, "
            f"n_source={n_source}) implies {expected} bytes with n_tokens >= 1; the record is "
            "truncated or corrupt"
        )
    tokens = np.frombuffer(data, _TOKENS_DTYPE, n_tokens, _HEADER.size)
    mask_start = _HEADER.size + 4 * n_tokens
    mask = np.frombuffer(data, np.uint8, n_tokens, mask_start)
    if mask.max() > 1:
        raise ValueError(f"{where}: loss_mask holds value {int(mask.max())}; only 0/1 are allowed")
    try:
        source = data[mask_start + n_tokens :].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: source name is not valid UTF-8 ({e})") from None
    if tokens.dtype != np.int32:  # big-endian hosts only
        tokens = tokens.astype(np.int32)
    return Example(tokens=tokens, loss_mask=mask, source=source, kind=KINDS[kind])


class ShardWriter:
    """Writes ``Example``s to one ArrayRecord shard, atomically.

    Records go to ``path + TMP_SUFFIX``; only a clean ``close()`` renames it to ``path``. A crashed
    or interrupted job therefore never leaves a file that looks like a finished shard.

    Usage::

      with ShardWriter("/data/text/text-00000-of-00004.array_record") as w:
        for ex in examples:
          w.write(ex)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.num_records = 0
        self._tmp = self.path + TMP_SUFFIX
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # group_size:1 keeps random access to one record a single small read.
        self._writer = array_record_module.ArrayRecordWriter(self._tmp, "group_size:1")
        if not self._writer.ok():
            raise ValueError(f"cannot open {self._tmp} for writing an ArrayRecord shard")

    def write(self, ex: Example) -> None:
        if self._writer is None:
            raise ValueError(f"ShardWriter for {self.path} is closed")
        self._writer.write(encode(ex))
        self.num_records += 1

    def close(self) -> None:
        """Finishes the shard and renames it to its final name."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        ok = writer.ok()  # ok() turns False once closed, so ask first
        try:
            writer.close()
        except RuntimeError as e:
            ok, why = False, str(e)
        else:
            why = "the writer reported an error"
        if not ok:
            raise ValueError(f"writing ArrayRecord shard {self._tmp} failed: {why}")
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drops the partial shard."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def list_shards(patterns: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands glob patterns / file names into a sorted, de-duplicated list of shard files.

    Every pattern must match at least one file, so a typo in one path of a source fails here
    instead of silently changing the mixture. Unfinished shards (``*`` + TMP_SUFFIX) are skipped.

    Args:
      patterns: one pattern or a sequence of them (``glob`` syntax, ``**`` allowed).

    Returns:
      The matching files, sorted.

    Raises:
      ValueError: no patterns, or a pattern that matches no finished file.
    """
    if isinstance(patterns, str | os.PathLike):
        patterns = [patterns]
    patterns = [os.fspath(p) for p in patterns]
    if not patterns:
        raise ValueError("no shard patterns given; pass a glob such as /data/text/*.array_record")
    files = set()
    for pattern in patterns:
        matched = [
            f
            for f in glob.glob(os.path.expanduser(pattern), recursive=True)
            if not f.endswith(TMP_SUFFIX) and os.path.isfile(f)
        ]
        if not matched:
            raise ValueError(
                f"shard pattern {pattern!r} matches no file; check the path (and that the job "
                "that writes it has finished: unfinished shards end in "
                f"{TMP_SUFFIX!r})"
            )
        files.update(matched)
    return sorted(files)
