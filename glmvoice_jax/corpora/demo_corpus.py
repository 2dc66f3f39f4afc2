"""Deterministic toy corpus for the tiny CPU pre-training demo.

The demo must run on a fresh clone with no downloads, so its data is generated here: three sources
in the real record schema (``glmvoice_jax.data.records``) and the ``demo`` token layout (UTF-8
bytes as
text, 512 speech codes at offset 512, vocab 1024). Each source has structure a tiny model can learn
in minutes, so the demo's loss visibly falls:

* ``text``: English sentences from a small grammar, as bytes: [gMASK]<sop> text <|endoftext|>.
* ``speech``: [gMASK]<sop><|begin_of_audio|> codes <|end_of_audio|> (glm4voice.md §12 #14); codes
  follow a seeded sparse Markov chain.
* ``interleaved``: text documents in which some word spans are replaced by wrapped "speech": each
  byte becomes 2 codes through a fixed seeded table, mimicking the text-to-token model
  (glm4voice.md §7.2, §12 #13).

Every token is a prediction target (loss_mask = 1). Documents are 64-600 tokens long.

Usage: python -m data_pipelines.demo_corpus --out DIR
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import numpy as np

from glmvoice_jax.data import records, token_layout

SOURCES = ("text", "speech", "interleaved")
MIN_LEN, MAX_LEN = 64, 600
_MANIFEST = "demo_corpus.json"
_FORMAT = 1  # bump when the generated content changes

_SUBJECTS = (
    "the cat", "a small dog", "the old man", "my sister", "the teacher", "a young bird",
    "the farmer", "our neighbour", "the little girl", "a tired horse", "the baker", "the robot",
)  # fmt: skip
_VERBS = (
    "sees", "likes", "finds", "carries", "paints", "follows", "watches", "builds", "cleans",
    "opens", "wants", "forgets",
)  # fmt: skip
_OBJECTS = (
    "a red ball", "the green door", "an apple", "the river", "a wooden box", "the blue car",
    "some bread", "the garden", "a new book", "the window", "a warm coat", "the big tree",
)  # fmt: skip
_PLACES = (
    "in the morning", "near the house", "after lunch", "every day", "in the park",
    "at night", "by the sea", "on the hill", "before dinner", "in the rain",
)  # fmt: skip
_ADVERBS = ("slowly", "quietly", "happily", "again", "carefully", "often")


def _sentence(rng: np.random.Generator) -> str:
    def pick(words):
        return words[rng.integers(len(words))]

    form = rng.integers(3)
    if form == 0:
        s = f"{pick(_SUBJECTS)} {pick(_VERBS)} {pick(_OBJECTS)} {pick(_PLACES)}."
    elif form == 1:
        s = f"{pick(_SUBJECTS)} {pick(_ADVERBS)} {pick(_VERBS)} {pick(_OBJECTS)}."
    else:
        both = f"{pick(_OBJECTS)} and {pick(_OBJECTS)}"
        s = f"{pick(_PLACES)}, {pick(_SUBJECTS)} {pick(_VERBS)} {both}."
    return s[0].upper() + s[1:]


def _fill(pieces: Iterator[list[int]], target: int, overhead: int) -> list[int]:
    """Concatenates pieces until ``target`` total tokens would be exceeded (at least MIN_LEN)."""
    out: list[int] = []
    for piece in pieces:
        total = len(out) + len(piece) + overhead
        if total > MAX_LEN or (total > target and len(out) + overhead >= MIN_LEN):
            if len(out) + overhead >= MIN_LEN:
                break
            continue  # a piece too long to fit below MAX_LEN; draw another
        out.extend(piece)
    return out


def _words(rng: np.random.Generator) -> Iterator[str]:
    while True:
        yield from (w + " " for w in _sentence(rng).split(" "))


def _text_doc(rng: np.random.Generator, layout: token_layout.TokenLayout) -> list[int]:
    def sentences():
        while True:
            yield list((_sentence(rng) + " ").encode("utf-8"))

    body = _fill(sentences(), int(rng.integers(MIN_LEN, MAX_LEN + 1)), overhead=3)
    return [*layout.bos_ids, *body, layout.eos_id]


def _speech_doc(
    rng: np.random.Generator, layout: token_layout.TokenLayout, successors: np.ndarray
) -> list[int]:
    n = int(rng.integers(MIN_LEN, MAX_LEN + 1)) - 4
    num_codes, k = successors.shape
    # Pre-draw all randomness so the chain walk is plain integer work.
    jump = (rng.random(n) < 0.1).tolist()
    pick = rng.integers(k, size=n).tolist()
    anywhere = rng.integers(num_codes, size=n).tolist()
    table = successors.tolist()
    code = anywhere[0]
    codes = []
    for i in range(n):
        code = anywhere[i] if jump[i] else table[code][pick[i]]
        codes.append(code)
    return [*layout.bos_ids, *layout.wrap_audio(codes).tolist()]


def _interleaved_doc(
    rng: np.random.Generator, layout: token_layout.TokenLayout, byte_codes: np.ndarray
) -> list[int]:
    boa, eoa = layout.special(token_layout.BEGIN_AUDIO), layout.special(token_layout.END_AUDIO)
    offset = layout.audio_offset

    def pieces():
        words = _words(rng)
        while True:
            if rng.random() < 0.3:  # a speech span of 1-4 words
                span = "".join(next(words) for _ in range(int(rng.integers(1, 5))))
                codes = byte_codes[np.frombuffer(span.strip().encode("utf-8"), np.uint8)]
                yield [boa, *(codes.reshape(-1) + offset).tolist(), eoa]
                yield list(b" ")
            else:
                yield list(next(words).encode("utf-8"))

    body = _fill(pieces(), int(rng.integers(MIN_LEN, MAX_LEN + 1)), overhead=3)
    return [*layout.bos_ids, *body, layout.eos_id]


def _generators(seed: int) -> dict[str, Callable[[np.random.Generator], list[int]]]:
    layout = token_layout.get("demo")
    table_rng = np.random.default_rng([seed, 12345])
    successors = table_rng.integers(layout.num_audio_tokens, size=(layout.num_audio_tokens, 4))
    byte_codes = table_rng.integers(layout.num_audio_tokens, size=(256, 2))
    return {
        "text": lambda rng: _text_doc(rng, layout),
        "speech": lambda rng: _speech_doc(rng, layout, successors),
        "interleaved": lambda rng: _interleaved_doc(rng, layout, byte_codes),
    }


def shard_path(out_dir: str, source: str, shard: int, num_shards: int) -> str:
    return os.path.join(out_dir, source, f"{source}-{shard:05d}-of-{num_shards:05d}.array_record")


def write_demo_corpus(
    out_dir: str, *, seed: int = 0, docs_per_source: int = 2000, num_shards: int = 4
) -> dict[str, str]:
    """Writes the demo corpus (idempotent: returns at once if the same corpus is complete).

    Args:
      out_dir: output folder; source S goes to ``out_dir/S/S-%05d-of-%05d.array_record``.
      seed: generation seed; same seed, same bytes.
      docs_per_source: documents per source.
      num_shards: shards per source; documents are split into contiguous, near-equal blocks.

    Returns:
      Source name -> glob pattern of its shards, ready for ``input_pipeline.SourceSpec.paths``.

    Raises:
      ValueError: num_shards < 1 or docs_per_source < num_shards.
    """
    if num_shards < 1 or docs_per_source < num_shards:
        raise ValueError(
            f"need 1 <= num_shards ({num_shards}) <= docs_per_source ({docs_per_source})"
        )
    patterns = {
        s: os.path.join(out_dir, s, f"{s}-*-of-{num_shards:05d}.array_record") for s in SOURCES
    }
    params = {"format": _FORMAT, "seed": seed, "docs_per_source": docs_per_source}
    params["num_shards"] = num_shards
    manifest = os.path.join(out_dir, _MANIFEST)
    files = [shard_path(out_dir, s, i, num_shards) for s in SOURCES for i in range(num_shards)]
    if os.path.exists(manifest) and all(os.path.exists(f) for f in files):
        with open(manifest) as f:
            if json.load(f) == params:
                return patterns
    if os.path.exists(manifest):
        os.remove(manifest)  # the corpus is being rewritten: not complete until the end

    for source, make_doc in _generators(seed).items():
        rng = np.random.default_rng([seed, SOURCES.index(source)])
        bounds = np.linspace(0, docs_per_source, num_shards + 1).astype(int)
        for shard in range(num_shards):
            with records.ShardWriter(shard_path(out_dir, source, shard, num_shards)) as w:
                for _ in range(bounds[shard], bounds[shard + 1]):
                    tokens = np.asarray(make_doc(rng), np.int32)
                    w.write(
                        records.Example(
                            tokens=tokens,
                            loss_mask=np.ones(len(tokens), np.uint8),
                            source=f"demo_{source}",
                            kind=source,  # the source names are record kinds
                        )
                    )
    tmp = manifest + records.TMP_SUFFIX
    with open(tmp, "w") as f:
        json.dump(params, f)
    os.replace(tmp, manifest)
    return patterns
