r"""Spoken StoryCloze-style eval (glm4voice.md §9.1, Table 3): which ending does the LM prefer?

An item is a story context with a correct and a wrong one-sentence continuation, as text, plus
optional audio files for any of the three parts (docs/eval.md has the item format). Parts without
audio are spoken by espeak-ng (one fixed voice, speed and pitch: ``ESPEAK_VOICE``) into
``cache_dir/speech/`` and reused on later runs. Speech goes through the speech tokenizer
(``speech_tokenizer.tokenize_waveforms``, 16 kHz mono) and every sequence is laid out with the
pre-training templates of ``prompts.py``, so the LM sees speech and text the way it saw them in
pre-training (glm4voice.md §12 #14, #15):

  mode  context -> ending   sequence (scored tokens in braces)                     template
  s2s   speech -> speech    [gMASK]<sop><|begin_of_audio|> ctx {end} <|end_of_audio|>  speech-only
  s2t   speech -> text      [gMASK]<sop><|begin_of_audio|> ctx <|end_of_audio|> {" " end}
                            <|endoftext|>                                          interleaved
  t2t   text -> text        [gMASK]<sop> ctx {" " end} <|endoftext|>                text

* s2s: the context's and the ending's speech tokens (tokenized separately, so the context tokens
  are the same for both endings) are one speech span, as one story read aloud: pre-training never
  shows two speech spans back to back (interleaved spans are at least one text token apart).
* s2t / t2t: the ending is encoded as " " + ending without the tokenizer prefix and appended to
  the context's ids; the leading space is how running text continues after a sentence (and after
  a speech span of an interleaved document), and tells the continuation from an ASR transcript.
* Only the ending's own tokens are scored, never the closing <|end_of_audio|> / <|endoftext|>,
  whose log-probability says how likely the story ends there rather than whether the ending fits.

Scoring (``scoring.Scorer``, float32): for each ending, ``logprob`` = the sum of log p(token |
everything before) over its tokens, and ``mean`` = logprob / tokens. **Accuracy uses the sum**:
the sum is the log-likelihood of the ending given the context, which is what "likelihood-based
choice" means in StoryCloze evaluations (TWIST, Spirit-LM, GLM-4-Voice §5.1); both endings share
the context and the demo items are minimal pairs of near-equal length, so length bias is small.
The per-token-mean accuracy is reported too (``<mode>_accuracy_per_token``). An item counts as
correct iff score(correct) > score(wrong); a tie counts as wrong.

Items whose audio cannot be read or synthesised (or is silent) are skipped in every mode, so all
modes are measured on the same items; the summary counts them by reason and the per-item JSONL
names the file and the error.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Sequence

import numpy as np

from glmvoice_jax import checkpoint, files
from glmvoice_jax.corpora import espeak, story_cloze_items
from glmvoice_jax.data import prompts
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.inference import scoring, tokenizing_job
from glmvoice_jax.inference import speech_tokenization as speech_tokenizer_lib

MODES = ("s2s", "s2t", "t2t")
SPEECH_MODES = ("s2s", "s2t")
PARTS = ("context", "correct", "wrong")
ENDINGS = ("correct", "wrong")
# The synthesis voice (espeak-ng voice, words per minute, pitch): one of the demo corpus' voices
# (glmvoice_jax/corpora/espeak_corpus.py) at its middle speed and pitch.
ESPEAK_VOICE = ("en-us", 165, 50)
SILENCE_PEAK = 1e-4  # as glmvoice-tokenize's --silence_peak default
_SYNTH_FORMAT = 1  # bump when synthesised audio would change: the cache key includes it
DEMO_ITEMS = story_cloze_items.DEMO_ITEMS_PATH


@dataclasses.dataclass(frozen=True)
class Item:
    """One validated item.

    ``audio`` maps a part ("context", "correct", "wrong") to an absolute path for the parts that
    come with audio; ``kind`` is the item's optional category.
    """

    id: str
    context: str
    correct: str
    wrong: str
    audio: dict[str, str]
    kind: str | None = None
    whole: bool = False  # release layout without a shared context: each file is a whole story

    def text(self, part: str) -> str:
        return getattr(self, part)

    def speech_parts(self, modes: Sequence[str]) -> tuple[str, ...]:
        if self.whole:
            return ENDINGS
        return PARTS if "s2s" in modes else ("context",)


# The SpokenStoryCloze release layout (sSC / tSC; as slp-rl's own evaluation code reads it): a
# folder of IDX_correct.wav + IDX_incorrect.wav, each a whole spoken story; its cross-modal
# variant adds IDX_mutual.wav (the shared context) and IDX_{mutual,correct,incorrect}.txt.
RELEASE_SUFFIXES = {"mutual": "context", "correct": "correct", "incorrect": "wrong"}


def read_release(folder: str, max_items: int | None = None) -> list[Item]:
    """Items of a SpokenStoryCloze release folder (its sub-folders too), sorted by index.

    With ``IDX_mutual.wav`` an item has a context and two endings (every mode; the text modes
    need the .txt transcripts). Without it, each file is a whole story and the item is scored as
    TWIST does: the log-likelihood of each whole spoken story (mode s2s only).

    Raises:
      ValueError: a folder without ``*_correct.wav``, or a story without its ``_incorrect.wav``.
    """
    found = sorted(
        os.path.join(d, f)
        for d, _, names in os.walk(folder)
        for f in names
        if f.endswith("_correct.wav")
    )
    if not found:
        raise ValueError(
            f"{folder} holds no IDX_correct.wav files (the SpokenStoryCloze release layout); "
            "see docs/eval.md for the layouts glmvoice-eval reads"
        )

    def index(path: str):
        stem = os.path.basename(path)[: -len("_correct.wav")]
        return (0, int(stem), path) if stem.isdigit() else (1, 0, path)

    items = []
    for path in sorted(found, key=index):
        base = path[: -len("_correct.wav")]
        audio, text = {}, {}
        for suffix, part in RELEASE_SUFFIXES.items():
            if os.path.exists(f"{base}_{suffix}.wav"):
                audio[part] = f"{base}_{suffix}.wav"
            if os.path.exists(f"{base}_{suffix}.txt"):
                with open(f"{base}_{suffix}.txt", encoding="utf-8", errors="replace") as f:
                    text[part] = f.read().strip()
        if "wrong" not in audio:
            raise ValueError(f"{path} has no {os.path.basename(base)}_incorrect.wav beside it")
        uid = os.path.relpath(base, folder)
        items.append(
            Item(
                uid,
                text.get("context", ""),
                text.get("correct", ""),
                text.get("wrong", ""),
                audio,
                whole="context" not in audio,
            )
        )
        if max_items is not None and len(items) >= max_items:
            break
    return items


def read_items(path: str, max_items: int | None = None) -> list[Item]:
    """Reads an items JSONL (docs/eval.md); relative audio paths are taken from its folder.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: naming ``path:line`` and the field that is wrong.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"items file {path} does not exist")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 (or None for all items), got {max_items}")
    base = os.path.dirname(os.path.abspath(path))
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, where, obj in files.objects(path):
        uid = obj.get("id")
        if isinstance(uid, bool) or not isinstance(uid, str | int) or uid == "":
            raise ValueError(f'{where}: field "id" must be a non-empty string or an integer')
        uid = str(uid)
        if uid in seen:
            raise ValueError(f'{where}: field "id" {uid!r} repeats the id of line {seen[uid]}')
        seen[uid] = n
        for part in PARTS:
            if not isinstance(obj.get(part), str) or not obj[part].strip():
                raise ValueError(f'{where}: field "{part}" must be a non-empty string')
        if obj["correct"].strip() == obj["wrong"].strip():
            raise ValueError(f'{where}: fields "correct" and "wrong" are the same text')
        audio_files = {}
        for part in PARTS:
            value = obj.get(f"{part}_audio")
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise ValueError(f'{where}: field "{part}_audio" must be a non-empty path')
            audio_files[part] = os.path.normpath(os.path.join(base, value))
        kind = obj.get("kind")
        items.append(
            Item(
                uid,
                obj["context"].strip(),
                obj["correct"].strip(),
                obj["wrong"].strip(),
                audio_files,
                str(kind) if kind is not None else None,
            )
        )
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise ValueError(f"items file {path} holds no items")
    return items


# ---------------------------------------------------------------------------------------------
# Speech synthesis (glmvoice_jax/corpora/espeak.py, the commands of the demo corpus), cached by
# content.


def synthesis_path(text: str, cache_dir: str, voice: tuple[str, int, int] = ESPEAK_VOICE) -> str:
    """Where the synthesised audio of ``text`` is cached: a hash of text, voice and format."""
    key = json.dumps([_SYNTH_FORMAT, list(voice), text], ensure_ascii=False)
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return os.path.join(cache_dir, "speech", f"{name}.wav")


def synthesize_missing(texts: Sequence[str], cache_dir: str) -> dict[str, str]:
    """Synthesises the texts whose cached audio is missing; returns {text: error} of failures."""
    todo = sorted({t for t in texts if not os.path.exists(synthesis_path(t, cache_dir))})
    if not todo:
        return {}
    espeak.check_tools(
        "synthesising the items' speech (or give every part of every item an audio file, "
        "docs/eval.md)"
    )

    def one(text: str) -> str | None:
        try:
            espeak.synthesize(text, synthesis_path(text, cache_dir), *ESPEAK_VOICE)
        except subprocess.CalledProcessError as e:
            err = (e.stderr or b"").decode("utf-8", "replace").strip()[-200:]
            return f"synthesis failed: {e.cmd[0]} exited with {e.returncode}: {err}"
        return None

    with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        errors = dict(zip(todo, pool.map(one, todo), strict=True))
    return {t: e for t, e in errors.items() if e is not None}


# ---------------------------------------------------------------------------------------------
# Sequences.


def text_encoder(lm_checkpoint: str, layout: token_layout_lib.TokenLayout) -> Callable:
    """The LM's text encoder: text -> ids without the [gMASK]<sop> prefix.

    A checkpoint without a recorded tokenizer in a ``demo`` layout uses that layout's text
    vocabulary, UTF-8 bytes (token_layout.py).

    Raises:
      ValueError: the checkpoint records no tokenizer and its layout is not ``demo``.
    """
    tok = checkpoint.text_tokenizer(lm_checkpoint)
    if tok is not None:
        return lambda text: tok.encode(text, add_prefix=False)
    if layout.text_is_utf8_bytes:
        return lambda text: list(text.encode("utf-8"))
    raise ValueError(
        f"checkpoint {lm_checkpoint} records no text tokenizer and its token layout is "
        f"{layout.name!r}, not 'demo' (UTF-8 bytes); the text modes need the tokenizer: import "
        "the checkpoint with its tokenizer files (glmvoice-import)"
    )


def build_sequence(
    mode: str, context, ending, layout: token_layout_lib.TokenLayout, *, source: str = "item"
) -> tuple[np.ndarray, int, int]:
    """One scored sequence: (ids, start, end); the ending's tokens are ids[start:end].

    Args:
      mode: "s2s", "s2t" or "t2t" (module docstring).
      context: speech codes (s2s, s2t) or text ids (t2t) of the context.
      ending: speech codes (s2s) or text ids of " " + ending (s2t, t2t).
      layout: the LM's token layout.
      source: names the item in error messages.
    """
    context, ending = np.asarray(context), np.asarray(ending)
    bos = len(layout.bos_ids)
    if mode == "s2s":
        ids = prompts.speech(np.concatenate([context, ending]), layout, source=source).tokens
        start, expected = bos + 1 + len(context), layout.codes_to_ids(ending)
    elif mode == "s2t":
        pieces = [("speech", context), ("text", ending)]
        ids = prompts.interleaved(pieces, layout, source=source).tokens
        start, expected = bos + len(context) + 2, ending
    elif mode == "t2t":
        ids = prompts.text(np.concatenate([context, ending]), layout, source=source).tokens
        start, expected = bos + len(context), ending
    else:
        raise ValueError(f"mode {mode!r} must be one of {MODES}")
    end = start + len(ending)
    assert np.array_equal(ids[start:end], expected), (mode, source)
    return ids, start, end


# ---------------------------------------------------------------------------------------------
# Evaluation.


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modes, str):
        modes = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes {list(modes)} must be a non-empty subset of {list(MODES)}")
    return tuple(dict.fromkeys(modes))


def _layout_of(lm_checkpoint: str) -> token_layout_lib.TokenLayout:
    meta = checkpoint.read_meta(lm_checkpoint)
    if "token_layout" not in meta:
        raise ValueError(
            f"checkpoint {lm_checkpoint} records no token layout (meta 'token_layout'); it is not "
            "a GLM language-model checkpoint of this project"
        )
    return token_layout_lib.TokenLayout.from_json(meta["token_layout"])


def _load_speech_tokenizer(path: str | None, layout: token_layout_lib.TokenLayout):
    if path is None:
        raise ValueError(
            "the speech modes (s2s, s2t) need a speech tokenizer checkpoint (speech_tokenizer= / "
            "--speech_tokenizer); pass one, or evaluate only the t2t mode"
        )
    cfg, model = speech_tokenizer_lib.load_model(path)
    if layout.num_audio_tokens < cfg.codebook_size:
        raise ValueError(
            f"the LM's token layout {layout.name!r} has {layout.num_audio_tokens} speech codes but "
            f"the speech tokenizer {path} has a codebook of {cfg.codebook_size}; use the tokenizer "
            "the LM was pre-trained with"
        )
    return model


def _speech_codes(
    items: list[Item], modes: tuple[str, ...], cache_dir: str, tok_model
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, tuple[str, str]], dict[str, dict]]:
    """(codes[item id][part], skipped[item id] = (category, detail), audio paths[item id])."""
    paths = {
        it.id: {
            p: it.audio.get(p) or synthesis_path(it.text(p), cache_dir)
            for p in it.speech_parts(modes)
        }
        for it in items
    }
    synth_errors = synthesize_missing(
        [it.text(p) for it in items for p in it.speech_parts(modes) if p not in it.audio],
        cache_dir,
    )
    skipped: dict[str, tuple[str, str]] = {}
    wavs, where = [], []
    for it in items:
        loaded = []
        for p in it.speech_parts(modes):
            if p not in it.audio and it.text(p) in synth_errors:
                skipped[it.id] = ("synthesis_failed", f"{p}: {synth_errors[it.text(p)]}")
                break
            wav, reason = tokenizing_job.load_checked(paths[it.id][p], SILENCE_PEAK)
            if wav is None:
                category = "silent_audio" if reason.startswith("silent") else "unreadable_audio"
                skipped[it.id] = (category, f"{p}: {reason}")
                break
            loaded.append((p, wav))
        if it.id not in skipped:
            for p, wav in loaded:
                wavs.append(wav)
                where.append((it.id, p))
    tokens = speech_tokenizer_lib.tokenize_waveforms(tok_model, wavs) if wavs else []
    codes: dict[str, dict[str, np.ndarray]] = {}
    for (uid, p), t in zip(where, tokens, strict=True):
        codes.setdefault(uid, {})[p] = t
    for it in items:  # a whole story is scored from its first token: an empty context
        if it.whole and it.id in codes:
            codes[it.id]["context"] = np.zeros((0,), np.int32)
    return codes, skipped, paths


def _score(
    lm_checkpoint,
    items: list[Item],
    modes: tuple[str, ...],
    layout: token_layout_lib.TokenLayout,
    codes: dict[str, dict[str, np.ndarray]],
    encode: Callable | None,
) -> dict[tuple[str, str, str], dict]:
    """(item id, mode, ending) -> {"logprob", "mean", "tokens"} of the ending's tokens."""
    seqs = {}
    for it in items:
        source = f"story_cloze item {it.id}"
        for mode in modes:
            ctx = encode(it.context) if mode == "t2t" else codes[it.id]["context"]
            for ending in ENDINGS:
                end = codes[it.id][ending] if mode == "s2s" else encode(" " + it.text(ending))
                seqs[it.id, mode, ending] = build_sequence(mode, ctx, end, layout, source=source)
    keys = list(seqs)  # all sequences in one call, so the scorer's batches are full
    scorer = lm_checkpoint.scorer if hasattr(lm_checkpoint, "scorer") else None
    scorer = scorer or scoring.Scorer(lm_checkpoint)
    lps = scorer.score([seqs[k][0] for k in keys])
    scores = {}
    for k, lp in zip(keys, lps, strict=True):
        _, a, b = seqs[k]
        total = float(np.sum(lp[a - 1 : b - 1], dtype=np.float64))  # lp[i - 1] scores ids[i]
        scores[k] = {"logprob": total, "mean": total / (b - a), "tokens": b - a}
    return scores


def _item_rows(
    items: list[Item],
    modes: tuple[str, ...],
    scores: dict[tuple[str, str, str], dict],
    skipped: dict[str, tuple[str, str]],
    audio_paths: dict[str, dict],
) -> list[dict]:
    """The per-item JSONL rows (docs/eval.md), with the decisions of both rules."""
    rows = []
    for it in items:
        row: dict = {"id": it.id} | ({"kind": it.kind} if it.kind is not None else {})
        if it.id in skipped:
            rows.append(row | {"skipped": skipped[it.id][1]})
            continue
        for mode in modes:
            c, w = scores[it.id, mode, "correct"], scores[it.id, mode, "wrong"]
            res = {f"{e}_{f}": v[f] for e, v in (("correct", c), ("wrong", w)) for f in v}
            res["correct_chosen"] = c["logprob"] > w["logprob"]  # a tie counts as wrong
            res["correct_chosen_per_token"] = c["mean"] > w["mean"]
            row[mode] = res
        if it.id in audio_paths:
            row["audio"] = audio_paths[it.id]
        rows.append(row)
    return rows


def evaluate(
    lm_checkpoint: str,
    items_path: str,
    *,
    speech_tokenizer: str | None,
    cache_dir: str,
    modes: Sequence[str] = MODES,
    max_items: int | None = None,
    per_item_output: str | None = None,
) -> dict:
    """Runs the StoryCloze-style eval of an LM checkpoint (module docstring).

    Args:
      lm_checkpoint: GLM checkpoint (manager root or step directory) with a token layout, or a
        live model (``lm_tasks.LiveLM``: the trainer's parameters, evaluation during training).
      items_path: items JSONL (docs/eval.md); ``DEMO_ITEMS`` is the bundled demo set.
      speech_tokenizer: speech-tokenizer checkpoint (HF directory or Orbax), needed by s2s / s2t.
      cache_dir: where synthesised audio is kept (``cache_dir/speech/``).
      modes: any of "s2s", "s2t", "t2t" (or a comma-separated string).
      max_items: evaluate only the first N items.
      per_item_output: optional JSONL path for one row per item with both endings' scores.

    Returns:
      {"<mode>_accuracy": float (sum rule), "<mode>_accuracy_per_token": float (mean rule) per
      mode, "items": evaluated items, "skipped": skipped items, "skipped_reasons": {category:
      count}, "modes": [...], "seconds": float}.

    Raises:
      ValueError: bad modes or items (naming the line and field), a speech mode without speech
        tokenizer, a tokenizer codebook larger than the LM's speech vocabulary, or no item left.
      FileNotFoundError: a missing items file or checkpoint, or espeak-ng / sox missing when
        audio must be synthesised.
    """
    start_time = time.perf_counter()
    modes = _check_modes(modes)
    if os.path.isdir(items_path):
        items = read_release(items_path, max_items)
        text_modes = [m for m in modes if m != "s2s"]
        if any(it.whole for it in items) and text_modes:
            raise ValueError(
                f"{items_path} holds whole spoken stories (no IDX_mutual.wav): only mode s2s "
                f"applies, not {text_modes}; pass --modes s2s"
            )
        if text_modes and not all(it.context and it.correct and it.wrong for it in items):
            raise ValueError(
                f"modes {text_modes} need the IDX_*.txt transcripts beside every story in "
                f"{items_path}; pass --modes s2s"
            )
    else:
        items = read_items(items_path, max_items)
    if hasattr(lm_checkpoint, "scorer"):  # a live model (evals/lm_tasks.LiveLM, training)
        layout, encode = lm_checkpoint.layout, lm_checkpoint.encode
    else:
        layout = _layout_of(lm_checkpoint)
        encode = text_encoder(lm_checkpoint, layout) if set(modes) - {"s2s"} else None
    codes: dict[str, dict[str, np.ndarray]] = {}
    skipped: dict[str, tuple[str, str]] = {}
    audio_paths: dict[str, dict] = {}
    if set(modes) & set(SPEECH_MODES):
        tok_model = _load_speech_tokenizer(speech_tokenizer, layout)
        codes, skipped, audio_paths = _speech_codes(items, modes, cache_dir, tok_model)
    kept = [it for it in items if it.id not in skipped]
    if not kept:
        reasons = sorted({detail for _, detail in skipped.values()})
        raise ValueError(f"none of the {len(items)} items could be evaluated: {reasons[:3]}")

    scores = _score(lm_checkpoint, kept, modes, layout, codes, encode)
    rows = _item_rows(items, modes, scores, skipped, audio_paths)
    if per_item_output:
        os.makedirs(os.path.dirname(os.path.abspath(per_item_output)), exist_ok=True)
        tmp = per_item_output + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, per_item_output)

    summary: dict = {}
    for mode in modes:
        for key, rule in (
            ("accuracy", "correct_chosen"),
            ("accuracy_per_token", "correct_chosen_per_token"),
        ):
            summary[f"{mode}_{key}"] = sum(r[mode][rule] for r in rows if mode in r) / len(kept)
    reasons: dict[str, int] = {}
    for category, _ in skipped.values():
        reasons[category] = reasons.get(category, 0) + 1
    summary.update(
        items=len(kept),
        skipped=len(skipped),
        skipped_reasons=reasons,
        modes=list(modes),
        seconds=time.perf_counter() - start_time,
    )
    return summary
