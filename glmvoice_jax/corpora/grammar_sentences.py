r"""Grammar sentences for the espeak-ng corpus: a seeded generator over the 108-word grammar.

``assets/grammar_sentences.txt`` (1200 sentences) was generated once from this grammar and
committed; this module writes it down and extends it. ``generate`` keeps a given list as the
first lines (every sentence must parse in the grammar) and appends new, distinct sentences drawn
with a seeded RNG, so that with the corpus' held-out rule (every 10th sentence,
glmvoice_jax/corpora/espeak_corpus.py) the held-out sentences of the shorter list stay held out, in
the same order, and no sentence of the extension repeats one of them: held-out sentences remain
unseen combinations of seen words.

Grammar (four templates, drawn with equal probability; "walked home" is one intransitive verb):

  TIME SUBJECT VERB the NOUN PLACE.          Last night the painter found the window at ...
  SUBJECT VERB the ADJ NOUN PLACE.           Our neighbor fixed the tall candle under the ...
  SUBJECT VERB a ADJ NOUN TIME.              The teacher hid a old chair every sunday.
  SUBJECT INTRANSITIVE PLACE TIME.           Her mother slept near the river after lunch.

16 subjects x 16 verbs x 12 adjectives x 16 nouns x 10 places x 8 times: about 1.2 M sentences.

Usage (writes the committed ``assets/grammar_sentences_6k.txt``):
  python -m data_pipelines.grammar_sentences --num_sentences 6000 \
      --out glmvoice_jax/corpora/assets/grammar_sentences_6k.txt
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
BASE_PATH = os.path.join(ASSETS, "grammar_sentences.txt")

SUBJECTS = (
    "the baker", "our neighbor", "a young girl", "the old man", "a tired child", "my sister",
    "her mother", "his uncle", "my brother", "a little boy", "the doctor", "the pilot",
    "the teacher", "the sailor", "the painter", "the farmer",
)  # fmt: skip
VERBS = (
    "found", "painted", "lost", "cleaned", "opened", "liked", "hid", "bought", "carried",
    "watched", "fixed", "sold", "moved", "washed", "dropped", "brought",
)  # fmt: skip
INTRANSITIVE = (
    "danced", "laughed", "waited", "slept", "walked home", "shouted", "smiled", "stopped",
)  # fmt: skip
ADJECTIVES = (
    "yellow", "red", "small", "soft", "tall", "heavy", "green", "broken", "shiny", "round",
    "wooden", "old",
)  # fmt: skip
NOUNS = (
    "box", "window", "kettle", "candle", "wagon", "bucket", "mirror", "basket", "blanket",
    "jacket", "chair", "bottle", "bicycle", "ladder", "pillow", "table",
)  # fmt: skip
PLACES = (
    "under the bridge", "at the station", "behind the house", "in the kitchen", "at the market",
    "on the hill", "in the garden", "in the village", "near the river", "by the lake",
)  # fmt: skip
TIMES = (
    "last night", "every sunday", "on monday", "this morning", "at noon", "yesterday",
    "after lunch", "before dinner",
)  # fmt: skip
# Template -> the word lists of its slots, in order.
TEMPLATES = {
    "{0} {1} {2} the {3} {4}": (TIMES, SUBJECTS, VERBS, NOUNS, PLACES),
    "{0} {1} the {2} {3} {4}": (SUBJECTS, VERBS, ADJECTIVES, NOUNS, PLACES),
    "{0} {1} a {2} {3} {4}": (SUBJECTS, VERBS, ADJECTIVES, NOUNS, TIMES),
    "{0} {1} {2} {3}": (SUBJECTS, INTRANSITIVE, PLACES, TIMES),
}


def _sentence(template: str, words: Sequence[str]) -> str:
    text = template.format(*words)
    return text[0].upper() + text[1:] + "."


def _pattern(template: str, slots: Sequence[Sequence[str]]) -> re.Pattern:
    # Templates hold only lower-case words, spaces and {i} slots: nothing to escape.
    return re.compile(template.format(*["(?:" + "|".join(words) + ")" for words in slots]))


_PATTERNS = [_pattern(t, slots) for t, slots in TEMPLATES.items()]


def in_grammar(sentence: str) -> bool:
    """Whether ``sentence`` (capitalised, with its full stop) is one the grammar generates."""
    if not sentence.endswith(".") or sentence[:1] != sentence[:1].upper():
        return False
    text = sentence[0].lower() + sentence[1:-1]
    return any(p.fullmatch(text) for p in _PATTERNS)


def sample(rng: np.random.Generator) -> str:
    """One sentence: a uniform template, then a uniform word per slot."""
    templates = list(TEMPLATES)
    template = templates[rng.integers(len(templates))]
    return _sentence(template, [s[rng.integers(len(s))] for s in TEMPLATES[template]])


def generate(num_sentences: int, *, seed: int = 0, keep: Sequence[str] = ()) -> list[str]:
    """``keep`` as the first lines, then new distinct grammar sentences up to ``num_sentences``.

    Raises:
      ValueError: a kept sentence is not in the grammar, repeats, or ``keep`` is too long.
    """
    bad = [s for s in keep if not in_grammar(s)]
    if bad:
        raise ValueError(f"{len(bad)} kept sentences are not in the grammar, e.g. {bad[:3]}")
    if len(set(keep)) != len(keep):
        raise ValueError("the kept sentences repeat; they must be distinct")
    if num_sentences < len(keep):
        raise ValueError(f"num_sentences ({num_sentences}) < the {len(keep)} kept sentences")
    out, seen = list(keep), set(keep)
    rng = np.random.default_rng(seed)
    while len(out) < num_sentences:
        s = sample(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def write(path: str, sentences: Sequence[str], *, seed: int, num_kept: int) -> None:
    header = (
        f"# {len(sentences)} distinct sentences over the 108-word grammar of "
        "glmvoice_jax/corpora/grammar_sentences.py:\n"
        f"# the first {num_kept} are assets/grammar_sentences.txt (so its held-out sentences, "
        f"every\n# 10th, stay held out), the rest drawn with seed {seed}. Regenerate with\n"
        f"# python -m data_pipelines.grammar_sentences --num_sentences {len(sentences)} "
        f"--seed {seed} --out PATH\n"
    )
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(header)
        f.writelines(s + "\n" for s in sentences)
    os.replace(path + ".tmp", path)
