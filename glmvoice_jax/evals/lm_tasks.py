r"""The paper's generation evals of a base LM: spoken QA (Table 4), ASR and TTS (Table 5).

glm4voice.md §9.2-9.3. Every task generates with the one engine of the project
(inference/engine.py), greedy (temperature 0), so a run is deterministic; prompts are the
pre-training templates (data/prompts.py) or, for a layout with chat roles, the chat template
(inference/chat_template.py):

  task       mode  prompt                                                  output
  spoken_qa  s2t   base: [gMASK]<sop><|begin_of_audio|> q <|end_of_audio|>  text until <|endoftext|>
                   chat: <|system|>..<|user|>\n speech(q) <|assistant|>..  interleaved; its text
  spoken_qa  s2s   base: [gMASK]<sop><|begin_of_audio|> q                   speech until
                                                                            <|end_of_audio|>
                   chat: as s2t                                            interleaved; its speech
  asr        -     [gMASK]<sop><|begin_of_audio|> speech <|end_of_audio|>   text until <|endoftext|>
  tts        -     [gMASK]<sop> text <|begin_of_audio|>                     speech until
                                                                            <|end_of_audio|>

Speech answers (s2s, tts) are transcribed by the **judge**: the ASR head of a speech-tokenizer
checkpoint applied to the tokens (inference/transcription.py), by default the tokenizer of the run
itself; name another with ``asr_judge`` to compare runs with one fixed judge. The paper instead
decodes the speech to audio and transcribes it with Whisper-Large-V3; a judge on tokens needs no
speech decoder, which the tokenizer-bitrate cells do not all have.

Answer matching (spoken QA, one place): the response and every reference answer go through
``asr_metrics.normalize_text`` (lower case, punctuation to spaces); an item is correct when some
reference answer occurs in the response as a run of whole words — the rule of the Llama Questions
/ Web Questions evaluations of Spectron and Moshi (an answer "contains" the reference).

Inputs:
* spoken QA items: JSONL lines {"id", "question", "answers": [..], "question_audio"?}, or the
  official release file of WebQuestions or TriviaQA (``_read_release_qa``).
* ASR / TTS utterances: a manifest JSONL {"id", "text", "audio"?} (as glmvoice-tokenize's), or a
  LibriSpeech-layout folder ([SPLIT/]SPEAKER/CHAPTER/*.flac + *.trans.txt, e.g. test-clean).
Items without audio are spoken by espeak-ng into ``cache_dir`` (story_cloze.py's cache).
Unreadable or silent audio is skipped and counted; the per-item JSONL names the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Sequence

import numpy as np

from glmvoice_jax import checkpoint, files
from glmvoice_jax.corpora import tfds_builders
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.evals import asr_metrics, story_cloze
from glmvoice_jax.inference import chat, chat_template, engine, tokenizing_job, transcription
from glmvoice_jax.inference import speech_tokenization as speech_tokenizer_lib

QA_MODES = ("s2t", "s2s")
ASSETS = os.path.join(os.path.dirname(story_cloze.DEMO_ITEMS))
DEMO_QA_ITEMS = os.path.join(ASSETS, "spoken_qa_demo.jsonl")
DEMO_UTTERANCES = os.path.join(ASSETS, "asr_tts_demo.jsonl")


@dataclasses.dataclass(frozen=True)
class Item:
    """One input: ``text`` is the question (QA) or the transcript (ASR/TTS)."""

    id: str
    text: str
    answers: tuple[str, ...] = ()
    audio: str | None = None


def _where_audio(base: str, value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: the audio field must be a non-empty path")
    return os.path.normpath(os.path.join(base, value))


def read_qa_items(path: str, max_items: int | None = None) -> list[Item]:
    """Spoken QA items (module docstring); relative audio paths are taken from the file's folder.

    Raises:
      FileNotFoundError: no such file.
      ValueError: naming ``path:line`` and the bad field.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"QA items file {path} does not exist")
    if path.endswith(".json"):  # an official release file (a JSON document, not JSON lines)
        return _read_release_qa(path, max_items)
    base, items = os.path.dirname(os.path.abspath(path)), []
    for _, where, obj in files.objects(path):
        uid, q, answers = obj.get("id"), obj.get("question"), obj.get("answers")
        if isinstance(uid, bool) or not isinstance(uid, str | int) or uid == "":
            raise ValueError(f'{where}: field "id" must be a non-empty string or an integer')
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f'{where}: field "question" must be a non-empty string')
        if isinstance(answers, str):
            answers = [answers]
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and asr_metrics.normalize_text(a) for a in answers)
        ):
            raise ValueError(f'{where}: field "answers" must be a non-empty list of answer texts')
        audio = _where_audio(base, obj.get("question_audio"), where)
        items.append(Item(str(uid), q.strip(), tuple(answers), audio))
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise ValueError(f"QA items file {path} holds no items")
    return items


_WEBQ_TARGET = re.compile(r'\(description (?:"((?:[^"\\]|\\.)*)"|([^()\s]+))\)')


def _read_release_qa(path: str, max_items: int | None) -> list[Item]:
    """The official release files of the text QA sets, spoken by espeak-ng (or IDX.wav beside).

    * WebQuestions (``webquestions.examples.test.json``): a JSON array of {"utterance",
      "targetValue": '(list (description "A") (description B))', "url"}; ids are the indexes.
    * TriviaQA (``*-web.json`` / ``*-wikipedia.json`` / unfiltered): {"Data": [{"QuestionId",
      "Question", "Answer": {"Value", "Aliases", "NormalizedAliases", ...}}]}.

    A file ``<id>.wav`` next to the JSON file is taken as the spoken question.

    Raises:
      ValueError: a JSON document of neither layout, or an entry without question or answers.
    """
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON document ({e.msg} at line {e.lineno})") from None
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    if isinstance(doc, list):  # WebQuestions
        for i, e in enumerate(doc):
            q, target = (e.get("utterance"), e.get("targetValue")) if isinstance(e, dict) else (
                None, None)  # fmt: skip
            answers = [a or b for a, b in _WEBQ_TARGET.findall(target or "")]
            rows.append((str(i), q, [a.replace('\\"', '"') for a in answers], f"{path}[{i}]"))
    elif isinstance(doc, dict) and isinstance(doc.get("Data"), list):  # TriviaQA
        for i, e in enumerate(doc["Data"]):
            e = e if isinstance(e, dict) else {}
            ans = e.get("Answer") if isinstance(e.get("Answer"), dict) else {}
            answers = [ans.get("Value")] + list(ans.get("Aliases") or [])
            uid = str(e.get("QuestionId") or i)
            rows.append((uid, e.get("Question"), answers, f"{path} Data[{i}]"))
    else:
        raise ValueError(
            f"{path}: neither a WebQuestions array nor a TriviaQA {{'Data': [...]}} document; "
            "convert the set to QA JSON lines (docs/eval.md)"
        )
    items = []
    for uid, q, answers, where in rows:
        answers = [a for a in answers if isinstance(a, str) and asr_metrics.normalize_text(a)]
        if not isinstance(q, str) or not q.strip() or not answers:
            raise ValueError(f"{where}: needs a question and at least one answer")
        wav = os.path.join(base, f"{uid}.wav")
        items.append(
            Item(
                uid, q.strip(), tuple(dict.fromkeys(answers)), wav if os.path.exists(wav) else None
            )
        )
        if max_items is not None and len(items) >= max_items:
            break
    if not items:
        raise ValueError(f"{path} holds no questions")
    return items


def read_utterances(path: str, max_items: int | None = None) -> list[Item]:
    """ASR / TTS utterances from a manifest JSONL or a LibriSpeech-layout folder (sorted by id).

    Raises:
      FileNotFoundError: no such file or folder.
      ValueError: naming the line and field, or a folder without LibriSpeech-layout audio.
    """
    if os.path.isdir(path):
        rows = [r for split in tfds_builders.librispeech_splits(path).values() for r in split]
        items = [Item(uid, text, (), audio) for uid, audio, text, _ in sorted(rows) if text]
    elif os.path.isfile(path):
        base, items = os.path.dirname(os.path.abspath(path)), []
        for _, where, obj in files.objects(path):
            uid, text = obj.get("id"), obj.get("text")
            if isinstance(uid, bool) or not isinstance(uid, str | int) or uid == "":
                raise ValueError(f'{where}: field "id" must be a non-empty string or an integer')
            if not isinstance(text, str) or not asr_metrics.normalize_text(text):
                raise ValueError(f'{where}: field "text" must hold words (the transcript)')
            items.append(Item(str(uid), text, (), _where_audio(base, obj.get("audio"), where)))
    else:
        raise FileNotFoundError(f"utterances {path} is neither a manifest file nor a folder")
    items = items[:max_items] if max_items is not None else items
    if not items:
        raise ValueError(f"{path} holds no utterances with a transcript")
    return items


def answer_matches(response: str, answers: Sequence[str]) -> bool:
    """True when a normalised reference answer occurs in the normalised response as whole words."""
    said = f" {asr_metrics.normalize_text(response)} "
    return any(f" {asr_metrics.normalize_text(a)} " in said for a in answers)


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LiveLM:
    """A GLM whose parameters are already on a mesh: what the trainer evaluates during training.

    The engine and the scorer hold the trainer's parameter arrays themselves (no second copy);
    ``encode`` / ``decode`` are the LM's text codec.
    """

    engine: engine.Engine
    scorer: object
    encode: object
    decode: object

    @property
    def layout(self) -> token_layout_lib.TokenLayout:
        return self.engine.layout


@dataclasses.dataclass
class _Models:
    engine: engine.Engine
    layout: token_layout_lib.TokenLayout
    encode: object
    decode: object
    template: chat_template.ChatTemplate
    tokenizer: object | None
    judge: transcription.TokenTranscriber | None


def _load(
    lm: str | LiveLM,
    speech_tokenizer: str | None,
    judge: str | None,
    config: engine.EngineConfig,
    need_tokenizer: bool,
    need_judge: bool,
) -> _Models:
    if isinstance(lm, LiveLM):
        layout = lm.layout
    else:
        meta = checkpoint.read_meta(lm)
        if "token_layout" not in meta:
            raise ValueError(f"checkpoint {lm} records no token layout; re-import it")
        layout = token_layout_lib.TokenLayout.from_json(meta["token_layout"])
    tok_model, codes = None, 0
    if need_tokenizer or need_judge:
        if speech_tokenizer is None:
            raise ValueError("this task needs --speech_tokenizer (the run's speech tokenizer)")
        tok_cfg, tok_model = speech_tokenizer_lib.load_model(speech_tokenizer)
        if tok_cfg.codebook_size > layout.num_audio_tokens:
            raise ValueError(
                f"speech tokenizer {speech_tokenizer} has {tok_cfg.codebook_size} codes but LM "
                f"{lm} (layout {layout.name!r}) has {layout.num_audio_tokens} speech ids"
            )
        codes = tok_cfg.codebook_size
    judge_model = transcription.TokenTranscriber(judge or speech_tokenizer) if need_judge else None
    if judge_model is not None and judge_model.cfg.codebook_size != codes:
        raise ValueError(
            f"ASR judge {judge} reads {judge_model.cfg.codebook_size} codes but speech tokenizer "
            f"{speech_tokenizer} writes {codes}; the judge must share the tokenizer's codebook"
        )
    if isinstance(lm, LiveLM):
        eng, encode, decode = lm.engine.with_speech_codes(codes), lm.encode, lm.decode
    else:
        eng = engine.Engine.from_checkpoint(lm, dataclasses.replace(config, speech_codes=codes))
        encode, decode = chat.text_codec(lm, eng.layout)
    template = chat_template.ChatTemplate.for_layout(eng.layout, encode)
    return _Models(eng, eng.layout, encode, decode, template, tok_model, judge_model)


def _speech_of(items: list[Item], models: _Models, cache_dir: str):
    """(codes by item id, skipped {id: reason}, audio path by id); missing audio is synthesised."""
    paths = {it.id: it.audio or story_cloze.synthesis_path(it.text, cache_dir) for it in items}
    failed = story_cloze.synthesize_missing([it.text for it in items if not it.audio], cache_dir)
    skipped, wavs, ids = {}, [], []
    for it in items:
        if not it.audio and it.text in failed:
            skipped[it.id] = failed[it.text]
            continue
        wav, reason = tokenizing_job.load_checked(paths[it.id], story_cloze.SILENCE_PEAK)
        if wav is None:
            skipped[it.id] = f"{paths[it.id]}: {reason}"
            continue
        wavs.append(wav)
        ids.append(it.id)
    codes = speech_tokenizer_lib.tokenize_waveforms(models.tokenizer, wavs) if wavs else []
    return dict(zip(ids, codes, strict=True)), skipped, paths


def _greedy(modality: str, stops: Sequence[int], max_new: int) -> engine.SamplingParams:
    return engine.SamplingParams(
        temperature=0.0, max_new_tokens=max_new, stop_ids=tuple(stops), modality=modality
    )


def _split(models: _Models, ids: np.ndarray) -> tuple[list[int], np.ndarray]:
    """(text ids, speech codes) of generated ids."""
    lay = models.layout
    ids = np.asarray(ids)
    text = [int(i) for i in ids if i < lay.text_vocab_size]
    speech = ids[(ids >= lay.audio_offset) & (ids < lay.audio_offset + lay.num_audio_tokens)]
    return text, (speech - lay.audio_offset).astype(np.int32)


def _finish(rows, skipped, summary: dict, per_item_output: str | None, start: float) -> dict:
    rows = rows + [{"id": k, "skipped": v} for k, v in skipped.items()]
    if per_item_output:
        files.write_jsonl(per_item_output, rows)
    return summary | {"skipped": len(skipped), "seconds": round(time.perf_counter() - start, 2)}


def spoken_qa(
    lm: str | LiveLM,
    items_path: str = DEMO_QA_ITEMS,
    *,
    speech_tokenizer: str,
    cache_dir: str,
    modes: Sequence[str] = QA_MODES,
    asr_judge: str | None = None,
    max_items: int | None = None,
    max_new_tokens: int = 128,
    config: engine.EngineConfig | None = None,
    per_item_output: str | None = None,
) -> dict:
    """Table 4: accuracy of text (s2t) and spoken (s2s) answers to spoken questions.

    Returns:
      {"s2t_accuracy", "s2s_accuracy" (those asked), "items", "skipped", "modes", "judge", ...}.
    """
    start = time.perf_counter()
    modes = tuple(dict.fromkeys(m.strip() for m in modes if m.strip()))
    if not modes or set(modes) - set(QA_MODES):
        raise ValueError(f"modes {list(modes)} must be a non-empty subset of {list(QA_MODES)}")
    items = read_qa_items(items_path, max_items)
    config = config or engine.EngineConfig(dtype="float32", max_context=2048)
    m = _load(lm, speech_tokenizer, asr_judge, config, True, "s2s" in modes)
    codes, skipped, paths = _speech_of(items, m, cache_dir)
    kept = [it for it in items if it.id in codes]
    if not kept:
        raise ValueError(f"none of the {len(items)} questions could be read or synthesised")
    lay, chat_kind = m.layout, m.template.kind == "chat"
    requests, keys = [], []
    for it in kept:
        user = chat_template.UserTurn(speech=codes[it.id])
        if chat_kind:  # one interleaved reply serves both modes
            prompt = m.template.chat_prompt([], user, None)
            requests.append(_greedy("interleave", m.template.stop_ids, 2 * max_new_tokens))
            keys.append((it.id, "chat", prompt))
            continue
        if "s2t" in modes:
            requests.append(_greedy("text", (lay.eos_id,), max_new_tokens))
            keys.append((it.id, "s2t", m.template.answer_prompt(user)))
        if "s2s" in modes:
            eoa = lay.special(token_layout_lib.END_AUDIO)
            prompt = list(lay.bos_ids) + lay.wrap_audio(codes[it.id]).tolist()[:-1]
            requests.append(_greedy("speech", (eoa,), 2 * max_new_tokens))
            keys.append((it.id, "s2s", prompt))
    done = m.engine.generate(
        [engine.Request(p, params) for (_, _, p), params in zip(keys, requests, strict=True)]
    )
    answers: dict[tuple[str, str], dict] = {}
    for (uid, kind, _), out in zip(keys, done, strict=True):
        text, speech = _split(m, out.tokens)
        for mode in modes if kind == "chat" else (kind,):
            answers[uid, mode] = {
                "text": m.decode(text) if mode == "s2t" else None,
                "codes": speech if mode == "s2s" else None,
                "truncated": out.truncated,
            }
    if "s2s" in modes:
        heard = m.judge.transcribe([answers[it.id, "s2s"]["codes"] for it in kept])
        for it, h in zip(kept, heard, strict=True):
            answers[it.id, "s2s"]["text"] = h
    rows, summary = [], {"task": "spoken_qa", "modes": list(modes), "items": len(kept)}
    for it in kept:
        row = {"id": it.id, "question": it.text, "audio": paths[it.id], "answers": it.answers}
        for mode in modes:
            a = answers[it.id, mode]
            row[mode] = {
                "response": a["text"],
                "correct": answer_matches(a["text"], it.answers),
                "truncated": a["truncated"],
            }
        rows.append(row)
    for mode in modes:
        summary[f"{mode}_accuracy"] = sum(r[mode]["correct"] for r in rows) / len(rows)
        summary[f"{mode}_truncated"] = sum(r[mode]["truncated"] for r in rows)
    summary["judge"] = (asr_judge or speech_tokenizer) if "s2s" in modes else None
    summary["template"] = m.template.kind
    return _finish(rows, skipped, summary, per_item_output, start)


def asr(
    lm: str | LiveLM,
    items_path: str = DEMO_UTTERANCES,
    *,
    speech_tokenizer: str,
    cache_dir: str,
    max_items: int | None = None,
    max_new_tokens: int = 256,
    config: engine.EngineConfig | None = None,
    per_item_output: str | None = None,
) -> dict:
    """Table 5, ASR: the LM transcribes speech with the pre-training ASR prompt; WER / CER."""
    start = time.perf_counter()
    items = read_utterances(items_path, max_items)
    config = config or engine.EngineConfig(dtype="float32", max_context=4096)
    m = _load(lm, speech_tokenizer, None, config, True, False)
    codes, skipped, paths = _speech_of(items, m, cache_dir)
    kept = [it for it in items if it.id in codes]
    if not kept:
        raise ValueError(f"none of the {len(items)} utterances could be read or synthesised")
    lay = m.layout
    reqs = [
        engine.Request(
            list(lay.bos_ids) + lay.wrap_audio(codes[it.id]).tolist(),
            _greedy("text", (lay.eos_id,), max_new_tokens),
        )
        for it in kept
    ]
    done = m.engine.generate(reqs)
    hyps = [m.decode(_split(m, d.tokens)[0]) for d in done]
    rates = asr_metrics.error_rates([it.text for it in kept], hyps)
    rows = [
        {"id": it.id, "audio": paths[it.id], "reference": it.text, "hypothesis": h,
         "truncated": d.truncated}
        for it, h, d in zip(kept, hyps, done, strict=True)
    ]  # fmt: skip
    summary = {"task": "asr", "items": len(kept), **rates}
    summary["truncated"] = sum(d.truncated for d in done)
    return _finish(rows, skipped, summary, per_item_output, start)


def tts(
    lm: str | LiveLM,
    items_path: str = DEMO_UTTERANCES,
    *,
    speech_tokenizer: str,
    asr_judge: str | None = None,
    max_items: int | None = None,
    max_len_ratio: float = 8.0,
    config: engine.EngineConfig | None = None,
    per_item_output: str | None = None,
) -> dict:
    """Table 5, TTS: the LM speaks each transcript (pre-training TTS prompt); the judge's WER."""
    start = time.perf_counter()
    items = read_utterances(items_path, max_items)
    config = config or engine.EngineConfig(dtype="float32", max_context=4096)
    m = _load(lm, speech_tokenizer, asr_judge, config, False, True)
    lay = m.layout
    eoa = lay.special(token_layout_lib.END_AUDIO)
    reqs = []
    for it in items:
        ids = [int(i) for i in m.encode(it.text)]
        limit = int(np.ceil(max_len_ratio * len(ids))) + 16
        prompt = m.template.speak_prompt(ids)
        reqs.append(engine.Request(prompt, _greedy("speech", (eoa,), limit)))
    done = m.engine.generate(reqs)
    speech = [_split(m, d.tokens)[1] for d in done]
    heard = m.judge.transcribe(speech)
    rates = asr_metrics.error_rates([it.text for it in items], heard)
    rows = [
        {"id": it.id, "text": it.text, "speech_tokens": int(s.size), "judge_transcript": h,
         "truncated": d.truncated}
        for it, s, h, d in zip(items, speech, heard, done, strict=True)
    ]  # fmt: skip
    summary = {"task": "tts", "items": len(items), **rates, "judge": asr_judge or speech_tokenizer}
    summary["truncated"] = sum(d.truncated for d in done)
    return _finish(rows, {}, summary, per_item_output, start)


def table_line(result: dict) -> str:
    """One line of a report: task, items and its measures (accuracy in %, error rates in %)."""
    keys = [k for k in sorted(result) if k.endswith("_accuracy") or k in ("wer", "cer")]
    parts = [f"{k} {100 * result[k]:.1f}%" for k in keys]
    return f"{result['task']}: {result['items']} items ({result.get('skipped', 0)} skipped) " + (
        ", ".join(parts)
    )
