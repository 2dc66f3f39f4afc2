"""Grain input of (waveform, transcript) batches for the speech-tokenizer trainer.

Manifest: JSON lines ``{"id", "audio", "text", ...}``; ``audio`` is a path, relative paths are
taken from the manifest's directory (glmvoice_jax/corpora/espeak_corpus.py writes such manifests).

Batches have fixed shapes per length bucket, so the jitted step compiles once per bucket:

* ``BatchPlan`` (a Grain random-access source) lists, for global batch i, the utterance indices:
  epoch e = i // batches_per_epoch is a seeded permutation, cut into windows of
  ``bucket_window`` batches; each window is sorted by length and split into batches (similar
  lengths together), and the batch order of the epoch is shuffled again. Deterministic in
  (seed, i), so the Grain iterator state (the next index) is all a checkpoint needs.
* ``load`` reads this process's rows of a batch (16 kHz mono float32 through ``audio.load_audio``)
  and pads the audio to the bucket of the *global* batch's longest utterance (a multiple of
  ``bucket_secs`` and of the model's samples-per-token), and the text to ``max_text_tokens``.

The log-mel is computed on device inside the train step from ``wav`` and ``wav_len``, and
``SpecAugment`` masks it there (training only; ``config.augment``).

Decoder sequences: full = prefix + text ids + [eos]; ``dec_in`` = full[:-1], ``dec_target`` =
full[1:], ``dec_weight`` = 1 where the target is a text token or eos (not a prefix token),
``dec_valid`` = 1 on the real (unpadded) input positions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
import soundfile

from glmvoice_jax import audio, files

BATCH_KEYS = ("wav", "wav_len", "dec_in", "dec_target", "dec_weight", "dec_valid")


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One manifest entry: id, audio path, transcript, token ids, and length in 16 kHz samples."""

    id: str
    audio: str
    text: str
    ids: tuple[int, ...]
    num_samples: int


def read_manifest(path: str) -> list[dict]:
    """JSON lines with at least "id", "audio", "text"; audio paths made absolute.

    Raises:
      ValueError: naming the file and line of a malformed row.
    """
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    for _, where, row in files.objects(path):
        missing = [k for k in ("id", "audio", "text") if k not in row]
        if missing:
            raise ValueError(f"{where}: missing fields {missing}; need id, audio, text")
        row["audio"] = os.path.join(base, row["audio"])
        rows.append(row)
    if not rows:
        raise ValueError(f"manifest {path} holds no utterances")
    return rows


def num_samples_16k(path: str) -> int:
    """Length after resampling to 16 kHz, from the file header (no decoding)."""
    info = soundfile.info(path)
    return int(math.ceil(info.frames * audio.SAMPLE_RATE / info.samplerate))


def prepare(
    rows: Sequence[dict],
    encode: Callable[[str], list[int]],
    *,
    max_samples: int,
    max_ids: int,
) -> tuple[list[Utterance], dict[str, int]]:
    """Tokenises transcripts and measures audio; drops what does not fit (counted by reason)."""
    kept, dropped = [], {"too_long_audio": 0, "too_long_text": 0, "empty_text": 0}
    for row in rows:
        ids = tuple(encode(row["text"]))
        n = num_samples_16k(row["audio"])
        if not ids:
            dropped["empty_text"] += 1
        elif len(ids) > max_ids:
            dropped["too_long_text"] += 1
        elif n > max_samples:
            dropped["too_long_audio"] += 1
        else:
            kept.append(Utterance(str(row["id"]), row["audio"], row["text"], ids, n))
    return kept, dropped


class BatchPlan:
    """Global batch index -> utterance indices (a Grain random-access data source)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        bucket_window: int = 8,
        num_epochs: int = 10_000,
    ):
        self.lengths = np.asarray(lengths, np.int64)
        if len(self.lengths) < batch_size:
            raise ValueError(
                f"the training manifest has {len(self.lengths)} usable utterances, fewer than "
                f"input.global_batch_size ({batch_size}); lower the batch size or add data"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_window = max(1, bucket_window)
        self.batches_per_epoch = len(self.lengths) // batch_size
        self.num_epochs = num_epochs

    def __len__(self) -> int:
        return self.batches_per_epoch * self.num_epochs

    @functools.lru_cache(maxsize=2)  # noqa: B019 (two epochs cached; the plan is immutable)
    def _epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))[: self.batches_per_epoch * self.batch_size]
        window = self.bucket_window * self.batch_size
        for start in range(0, len(order), window):
            part = order[start : start + window]
            order[start : start + window] = part[np.argsort(self.lengths[part], kind="stable")]
        batches = order.reshape(self.batches_per_epoch, self.batch_size)
        return batches[rng.permutation(self.batches_per_epoch)]

    def __getitem__(self, index: int) -> np.ndarray:
        epoch, i = divmod(int(index), self.batches_per_epoch)
        return self._epoch(epoch)[i]


def bucket_width(max_samples: int, bucket_samples: int) -> int:
    """Smallest multiple of bucket_samples that holds max_samples."""
    return -(-max_samples // bucket_samples) * bucket_samples


def make_batch(
    utts: Sequence[Utterance],
    width: int,
    *,
    prefix: Sequence[int],
    eos_id: int,
    max_text_tokens: int,
    num_rows: int | None = None,
) -> dict[str, np.ndarray]:
    """Loads and pads utterances into one batch dict (rows beyond ``utts`` are dummies).

    Args:
      utts: the utterances of this batch (this process's rows).
      width: padded audio length in samples.
      prefix: decoder prefix ids (start tokens).
      eos_id: end-of-text id.
      max_text_tokens: decoder sequence length U (prefix + text + eos must fit U + 1).
      num_rows: pad the batch to this many rows (evaluation); dummy rows have zero weight.
    """
    b = len(utts) if num_rows is None else num_rows
    out = {
        "wav": np.zeros((b, width), np.float32),
        "wav_len": np.full((b,), width, np.int32),  # dummy rows: silence of full width
        "dec_in": np.zeros((b, max_text_tokens), np.int32),
        "dec_target": np.zeros((b, max_text_tokens), np.int32),
        "dec_weight": np.zeros((b, max_text_tokens), np.float32),
        "dec_valid": np.zeros((b, max_text_tokens), bool),
    }
    p = len(prefix)
    for r, u in enumerate(utts):
        wav = audio.load_audio(u.audio)[:width]
        out["wav"][r, : wav.shape[0]] = wav
        out["wav_len"][r] = wav.shape[0]
        full = [*prefix, *u.ids, eos_id]
        n = len(full) - 1
        if n > max_text_tokens:
            raise ValueError(
                f"utterance {u.id}: {n} decoder positions exceed max_text_tokens "
                f"({max_text_tokens}); it should have been dropped by prepare()"
            )
        out["dec_in"][r, :n] = full[:-1]
        out["dec_target"][r, :n] = full[1:]
        out["dec_weight"][r, p - 1 : n] = 1.0
        out["dec_valid"][r, :n] = True
    return out


def make_iterator(
    utts: Sequence[Utterance],
    *,
    global_batch_size: int,
    bucket_samples: int,
    prefix: Sequence[int],
    eos_id: int,
    max_text_tokens: int,
    seed: int,
    bucket_window: int,
    process_index: int,
    process_count: int,
    num_threads: int,
    prefetch_buffer_size: int,
) -> grain.DatasetIterator:
    """The checkpointable Grain iterator of this process's rows of every global batch."""
    plan = BatchPlan(
        [u.num_samples for u in utts], global_batch_size, seed=seed, bucket_window=bucket_window
    )
    local = global_batch_size // process_count
    lo, hi = process_index * local, (process_index + 1) * local

    def load(indices: np.ndarray) -> dict[str, np.ndarray]:
        width = bucket_width(max(utts[i].num_samples for i in indices), bucket_samples)
        rows = [utts[i] for i in indices[lo:hi]]
        return make_batch(
            rows, width, prefix=prefix, eos_id=eos_id, max_text_tokens=max_text_tokens
        )

    ds = grain.MapDataset.source(plan).map(load)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return iter(ds.to_iter_dataset(options))


def eval_batches(
    utts: Sequence[Utterance],
    *,
    batch_size: int,
    bucket_samples: int,
    prefix: Sequence[int],
    eos_id: int,
    max_text_tokens: int,
) -> Iterator[tuple[list[Utterance], dict[str, np.ndarray]]]:
    """Fixed held-out batches, sorted by length, each padded to ``batch_size`` rows."""
    order = sorted(utts, key=lambda u: u.num_samples)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = bucket_width(max(u.num_samples for u in chunk), bucket_samples)
        yield (
            chunk,
            make_batch(
                chunk,
                width,
                prefix=prefix,
                eos_id=eos_id,
                max_text_tokens=max_text_tokens,
                num_rows=batch_size,
            ),
        )


@dataclasses.dataclass(frozen=True)
class SpecAugment:
    """SpecAugment masking (Park et al. 2019, arXiv:1904.08779, §2), without time warping.

    Per utterance: ``freq_masks`` bands of f ~ U{0..freq_width} mel bins starting at
    f0 ~ U{0..M - f}, and ``time_masks`` bands of t ~ U{0..min(time_width, time_frac * length)}
    frames starting at t0 ~ U{0..length - t}; the ``time_frac`` bound on the width is the paper's
    p (its adaptive form, Park et al. 2020, arXiv:1912.05533, scales it with the length). Masked
    values are set to the utterance's mean log-mel (the paper masks to the mean, 0 after its
    normalisation); padding frames are left alone. Zero masks of both kinds = off.
    """

    freq_masks: int = 0
    freq_width: int = 27
    time_masks: int = 0
    time_width: int = 20
    time_frac: float = 0.1

    @property
    def enabled(self) -> bool:
        return self.freq_masks > 0 or self.time_masks > 0

    def __call__(self, mel: jax.Array, mel_mask: jax.Array, key: jax.Array) -> jax.Array:
        """Masks mel [B, L, M] (valid frames: mel_mask [B, L]); returns the same shape."""
        if not self.enabled:
            return mel
        b, frames, bins = mel.shape
        length = jnp.sum(mel_mask, axis=1).astype(jnp.int32)  # [B]
        key_f, key_t = jax.random.split(key)
        masked_f = _bands(key_f, self.freq_masks, jnp.full((b,), self.freq_width), bins, bins)
        max_t = jnp.minimum(self.time_width, jnp.floor(self.time_frac * length).astype(jnp.int32))
        masked_t = _bands(key_t, self.time_masks, max_t, length, frames)
        masked = (masked_f[:, None, :] | masked_t[:, :, None]) & mel_mask[:, :, None]  # [B, L, M]
        valid = mel_mask[:, :, None].astype(mel.dtype)
        mean = jnp.sum(mel * valid, axis=(1, 2)) / jnp.maximum(
            jnp.sum(valid, axis=(1, 2)) * bins, 1
        )
        return jnp.where(masked, mean[:, None, None].astype(mel.dtype), mel)


def _bands(key: jax.Array, count: int, max_width: jax.Array, extent, size: int) -> jax.Array:
    """[B, size] bool: ``count`` bands per row, width U{0..max_width}, inside [0, extent)."""
    b = max_width.shape[0]
    if count == 0:
        return jnp.zeros((b, size), bool)
    key_w, key_s = jax.random.split(key)
    extent = jnp.broadcast_to(jnp.asarray(extent, jnp.int32), (b,))[:, None]  # [B, 1]
    max_width = jnp.minimum(max_width[:, None], extent)  # [B, 1]
    width = jnp.floor(jax.random.uniform(key_w, (b, count)) * (max_width + 1)).astype(jnp.int32)
    start = jnp.floor(jax.random.uniform(key_s, (b, count)) * (extent - width + 1))
    start = start.astype(jnp.int32)  # [B, K]
    pos = jnp.arange(size)[None, None, :]  # [1, 1, size]
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # [B, K, size]
    return jnp.any(inside, axis=1)
