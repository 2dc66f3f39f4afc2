r"""Real-speech demo corpus for the speech-tokenizer trainer, synthesised with espeak-ng.

The bundled English sentences (``assets/sentences.txt``: 255 hand-written ones;
``assets/grammar_sentences.txt``: 1200 over a 108-word grammar;
``assets/grammar_sentences_6k.txt``: those 1200, then 4800 more from the same grammar, made by
glmvoice_jax/corpora/grammar_sentences.py; all written for this project) are spoken by several
espeak-ng voices at several speeds and pitches, resampled by sox to 16 kHz mono 16-bit PCM
(``sox -R -D``: repeatable, no dither, so the corpus is bit-identical on every run), and listed in
two manifests, one JSON object per line:

  {"id": "s0012_v1", "audio": "audio/s0012_v1.wav", "text": "...", "speaker": "en-gb+m3",
   "speed_wpm": 165, "pitch": 50, "seconds": 2.9}

``audio`` is relative to the manifest's directory. The split is by *sentence*: every
``heldout_every``-th sentence (all its voices) goes to ``heldout.jsonl``, so held-out WER/CER
measure transcription of text the model never saw, not recall of memorised sentences.

The audio is made on first use into a given directory (never into git) and not redone when the
directory already holds a finished corpus of the same settings (``corpus.json`` records them).

Needs the ``espeak-ng`` and ``sox`` programs: ``apt-get install -y espeak-ng sox``.

Usage: python -m data_pipelines.espeak_corpus --out DIR [--sentences natural|grammar|grammar_6k]
           [--variants_per_sentence 3] [--max_sentences N]
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil

import soundfile

from glmvoice_jax.corpora import espeak

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
# Bundled sentence lists: "natural" (255 hand-written sentences), "grammar" (1200 sentences over
# a 108-word grammar: held-out sentences are new combinations of seen words) and "grammar_6k"
# (those 1200 first, so the same sentences are held out in the same order, then 4800 more).
SENTENCE_SETS = {
    "natural": os.path.join(ASSETS, "sentences.txt"),
    "grammar": os.path.join(ASSETS, "grammar_sentences.txt"),
    "grammar_6k": os.path.join(ASSETS, "grammar_sentences_6k.txt"),
}
SENTENCES_PATH = SENTENCE_SETS["natural"]
# espeak-ng voice (+ variant) names; each one is a "speaker" of the corpus.
VOICES = (
    "en-us",
    "en-us+f3",
    "en-gb",
    "en-gb-x-rp+f2",
    "en-gb-scotland+m3",
    "en-029+f4",
)
SPEEDS_WPM = (140, 165, 190)
PITCHES = (35, 50, 65)
SAMPLE_RATE = espeak.SAMPLE_RATE
SPLITS = ("train", "heldout")
_FORMAT = 2  # bump when the generated audio would change
_MARKER = "corpus.json"


def read_sentences(path: str = SENTENCES_PATH) -> list[str]:
    """The non-empty, non-comment lines of the sentence file."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def plan(
    sentences: list[str], *, variants_per_sentence: int = 3, heldout_every: int = 10
) -> list[dict]:
    """The utterances to synthesise: (sentence, voice, speed, pitch) per variant, with its split.

    Variant k of sentence i uses voice (i + 2k) mod 6, speed (i // 6 + k) mod 3 and pitch
    (i + k) mod 3, so every voice speaks many sentences at every speed, deterministically.
    """
    if not 1 <= variants_per_sentence <= len(VOICES):
        raise ValueError(
            f"variants_per_sentence ({variants_per_sentence}) must be in [1, {len(VOICES)}]"
        )
    if heldout_every < 2:
        raise ValueError(f"heldout_every ({heldout_every}) must be >= 2 (1 would hold out all)")
    out = []
    for i, text in enumerate(sentences):
        split = "heldout" if i % heldout_every == heldout_every - 1 else "train"
        for k in range(variants_per_sentence):
            out.append(
                {
                    "id": f"s{i:04d}_v{k}",
                    "text": text,
                    "speaker": VOICES[(i + 2 * k) % len(VOICES)],
                    "speed_wpm": SPEEDS_WPM[(i // len(VOICES) + k) % len(SPEEDS_WPM)],
                    "pitch": PITCHES[(i + k) % len(PITCHES)],
                    "split": split,
                }
            )
    return out


def _synthesise(utt: dict, path: str) -> float:
    """Speaks one planned utterance into ``path`` (corpora/espeak.py); returns its seconds."""
    espeak.synthesize(utt["text"], path, utt["speaker"], utt["speed_wpm"], utt["pitch"])
    return soundfile.info(path).duration


def make_corpus(
    out_dir: str,
    *,
    max_sentences: int | None = None,
    variants_per_sentence: int = 3,
    heldout_every: int = 10,
    num_threads: int = 2,
    sentences_path: str = SENTENCES_PATH,
) -> dict[str, str]:
    """Synthesises the corpus into ``out_dir`` unless a finished one with these settings is there.

    Args:
      out_dir: destination; gets ``audio/*.wav``, ``train.jsonl``, ``heldout.jsonl``, corpus.json.
      max_sentences: use only the first N sentences (tests); None uses all.
      variants_per_sentence: voices per sentence (1..6).
      heldout_every: every n-th sentence goes to the held-out split.
      num_threads: parallel espeak-ng / sox processes.
      sentences_path: the sentence file.

    Returns:
      {"train": path of train.jsonl, "heldout": path of heldout.jsonl}.

    Raises:
      FileNotFoundError: espeak-ng or sox is missing (with the install command).
    """
    sentences = read_sentences(sentences_path)[:max_sentences]
    settings = {
        "format": _FORMAT,
        "sentences_sha256": hashlib.sha256("\n".join(sentences).encode()).hexdigest(),
        "variants_per_sentence": variants_per_sentence,
        "heldout_every": heldout_every,
    }
    manifests = {s: os.path.join(out_dir, f"{s}.jsonl") for s in SPLITS}
    marker = os.path.join(out_dir, _MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if done.get("settings") == settings and all(os.path.exists(p) for p in manifests.values()):
            return manifests
        os.remove(marker)  # other settings: start over
        shutil.rmtree(os.path.join(out_dir, "audio"), ignore_errors=True)
    espeak.check_tools("the espeak corpus")
    utts = plan(sentences, variants_per_sentence=variants_per_sentence, heldout_every=heldout_every)
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)

    def one(utt: dict) -> dict:
        rel = f"audio/{utt['id']}.wav"
        seconds = _synthesise(utt, os.path.join(out_dir, rel))
        row = {k: v for k, v in utt.items() if k != "split"}
        return dict(row, audio=rel, seconds=round(seconds, 3))

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        rows = list(pool.map(one, utts))
    counts = {}
    for split in SPLITS:
        chosen = [r for r, u in zip(rows, utts) if u["split"] == split]
        counts[split] = {"utterances": len(chosen), "seconds": sum(r["seconds"] for r in chosen)}
        tmp = manifests[split] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for r in chosen:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, manifests[split])
    with open(marker + ".tmp", "w") as f:
        json.dump({"settings": settings, "counts": counts}, f, indent=2)
    os.replace(marker + ".tmp", marker)
    return manifests
