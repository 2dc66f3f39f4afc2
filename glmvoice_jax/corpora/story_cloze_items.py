r"""The demo item set of the StoryCloze-style eval (evals/story_cloze.py, docs/eval.md).

Short templated stories over the words of the bundled espeak-ng sentences
(``assets/grammar_sentences.txt``, ``assets/sentences.txt``), so a tiny LM pretrained on the demo
corpus knows every word. Each item is a minimal pair: the correct and the wrong continuation are
the same sentence except for one slot, and the wrong slot contradicts the context:

  kind     context (3 sentences)                         continuation slot
  object   S bought a A O P. S T1 the O X. S I P2.       S T2 the O X2.     wrong: an object not in
                                                                            the context
  subject  S found a A O P. S carried the O P2. S2 I P3.  S T the O X.       wrong: a person not in
                                                                            the context
  place    S hid the O P. S I P2. S2 waited X.           S2 found the O P.  wrong: another place

(S/S2 people, A an adjective, O/O2 objects, P places, X times, T transitive and I intransitive
verbs.) Every word of every item is checked against the bundled sentences' vocabulary.

Usage (writes the committed demo set):
  python -m data_pipelines.story_cloze_items \
      --out glmvoice_jax/corpora/assets/story_cloze_demo.jsonl --num_items 100 --seed 0
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
CORPUS_FILES = (
    os.path.join(ASSETS, "grammar_sentences.txt"),
    os.path.join(ASSETS, "sentences.txt"),
)
DEMO_ITEMS_PATH = os.path.join(ASSETS, "story_cloze_demo.jsonl")
KINDS = ("object", "subject", "place")

# Slot fillers, all taken from the grammar of assets/grammar_sentences.txt.
PEOPLE = (
    "the baker",
    "the sailor",
    "the teacher",
    "the doctor",
    "the pilot",
    "the painter",
    "the farmer",
    "our neighbor",
    "my sister",
    "my brother",
    "her mother",
    "his uncle",
)
OBJECTS = (
    "box",
    "window",
    "kettle",
    "candle",
    "mirror",
    "basket",
    "jacket",
    "chair",
    "bottle",
    "wagon",
    "blanket",
    "bucket",
    "bicycle",
    "ladder",
    "pillow",
    "table",
)
ADJECTIVES = (
    "yellow",
    "red",
    "small",
    "tall",
    "soft",
    "heavy",
    "green",
    "broken",
    "shiny",
    "round",
    "wooden",
)
PLACES = (
    "under the bridge",
    "at the station",
    "behind the house",
    "in the kitchen",
    "at the market",
    "on the hill",
    "in the garden",
    "in the village",
    "near the river",
    "by the lake",
)
TIMES = (
    "last night",
    "every sunday",
    "on monday",
    "this morning",
    "yesterday",
    "at noon",
    "after lunch",
    "before dinner",
)
TRANSITIVE = (
    "painted",
    "cleaned",
    "opened",
    "liked",
    "fixed",
    "watched",
    "sold",
    "moved",
    "washed",
    "brought",
    "dropped",
)
INTRANSITIVE = ("danced", "laughed", "waited", "slept", "shouted", "smiled", "stopped")


def _sentence(*parts: str) -> str:
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def _pick(rng: np.random.Generator, options, k: int) -> list[str]:
    return [options[i] for i in rng.choice(len(options), size=k, replace=False)]


def make_item(rng: np.random.Generator, kind: str) -> dict:
    """One story of ``kind`` (see the module docstring): {"context", "correct", "wrong", "kind"}."""
    s, s2, s3 = _pick(rng, PEOPLE, 3)
    o, o2 = _pick(rng, OBJECTS, 2)
    (a,) = _pick(rng, ADJECTIVES, 1)
    p, p2, p3 = _pick(rng, PLACES, 3)
    x, x2 = _pick(rng, TIMES, 2)
    t1, t2 = _pick(rng, TRANSITIVE, 2)
    (i,) = _pick(rng, INTRANSITIVE, 1)
    if kind == "object":
        context = [
            _sentence(s, "bought a", a, o, p),
            _sentence(s, t1, "the", o, x),
            _sentence(s, i, p2),
        ]
        correct, wrong = _sentence(s, t2, "the", o, x2), _sentence(s, t2, "the", o2, x2)
    elif kind == "subject":
        context = [
            _sentence(s, "found a", a, o, p),
            _sentence(s, "carried the", o, p2),
            _sentence(s2, i, p3),
        ]
        correct, wrong = _sentence(s, t1, "the", o, x), _sentence(s3, t1, "the", o, x)
    elif kind == "place":
        context = [
            _sentence(s, "hid the", o, p),
            _sentence(s, i, p2),
            _sentence(s2, "waited", x),
        ]
        correct, wrong = _sentence(s2, "found the", o, p), _sentence(s2, "found the", o, p3)
    else:
        raise ValueError(f"kind {kind!r} must be one of {KINDS}")
    return {"context": " ".join(context), "correct": correct, "wrong": wrong, "kind": kind}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def corpus_vocabulary(paths=CORPUS_FILES) -> set[str]:
    """Lower-cased words of the bundled sentence files (comment lines skipped)."""
    vocab: set[str] = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    vocab |= _words(line)
    return vocab


def make_items(num_items: int, seed: int = 0) -> list[dict]:
    """``num_items`` stories, kinds in turn, from a seeded generator; ids ``sc0000``, ...

    Raises:
      ValueError: if a story uses a word that the bundled sentences lack (a template bug).
    """
    rng = np.random.default_rng([seed, 1729])
    vocab = corpus_vocabulary()
    items = []
    for n in range(num_items):
        item = {"id": f"sc{n:04d}", **make_item(rng, KINDS[n % len(KINDS)])}
        unknown = _words(" ".join([item["context"], item["correct"], item["wrong"]])) - vocab
        if unknown:
            raise ValueError(f"item {item['id']} uses words outside the corpus: {sorted(unknown)}")
        items.append(item)
    return items


def write_items(path: str, num_items: int, seed: int = 0) -> str:
    items = make_items(num_items, seed)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(item) + "\n" for item in items)
    os.replace(tmp, path)
    return path
