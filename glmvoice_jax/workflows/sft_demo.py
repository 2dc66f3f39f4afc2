"""The tiny stage-2 SFT demo (issue 15 item 5): spoken questions answered in the 13 : 26 format.

Inputs (from ``make demo``, workdir DEMO): the pre-trained tiny GLM (DEMO/checkpoints) and the
tiny speech tokenizer (DEMO/tokenizer). Steps, all under OUT:

1. ``make_dialogues``: bundled question / answer pairs built from the word lists of
   corpora/grammar_sentences.py ("Where is the yellow box?" -> "The yellow box is under the
   bridge.": the place is a fixed function of the noun, so the answer is learnable from the
   spoken question); both sides spoken by espeak-ng (the question at 150 wpm, the answer slowly,
   80 wpm with 200 ms between words, so that at 12.5 speech tokens/s a reply's speech outlasts
   its UTF-8 byte text under the 13 : 26 rule, as GLM-4's BPE text does at normal pace;
   prompts.streaming_reply) and tokenized by the demo tokenizer.
   OUT/dialogues/train.jsonl and heldout.jsonl (unseen adjective-noun pairs) with audio refs
   into OUT/dialogues/tokens.jsonl.
2. ``data_pipelines/dialogue_records.py``' job -> OUT/run/sft/{speech_output,text_output}.
3. ``glmvoice-train`` on configs/sft_tiny.py from DEMO/checkpoints -> OUT/run/checkpoints.
4. ``evaluate`` before (the pre-trained model read with the ``demo_chat`` layout, so the chat
   template applies) and after SFT: greedy generation in the engine's ``interleave`` modality
   from the chat prompt of each held-out spoken question (exactly glmvoice-chat's prompt), and
   * well-formed: the reply ends with the template's stop <|user|> (not truncated) and holds
     text and speech (the modality constraint makes every reply follow 13 : 26 otherwise);
   * answer-text CER of the reply's text against the reference answer (evals/asr_metrics.py).
   OUT/report.json holds both.
"""

from __future__ import annotations

import json
import os

import numpy as np
import soundfile as sf

from glmvoice_jax import checkpoint, config_lib, files
from glmvoice_jax.corpora import dialogue_records, espeak, grammar_sentences
from glmvoice_jax.data import token_layout
from glmvoice_jax.evals import asr_metrics
from glmvoice_jax.inference import chat_template, engine, speech_tokenization
from glmvoice_jax.trainers import lm

VOICE, PITCH = "en-us", 50
QUESTION_WPM, ANSWER_WPM, ANSWER_WORD_GAP = 150, 80, 20
LAYOUT = "demo_chat"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT_CONFIG = os.path.join(REPO, "configs", "sft_tiny.py")


def qa_pairs() -> list[tuple[str, str, str]]:
    """(id, question, answer) for every adjective x noun, in a fixed order."""
    out = []
    g = grammar_sentences
    for i, noun in enumerate(g.NOUNS):
        place = g.PLACES[i % len(g.PLACES)]
        for j, adj in enumerate(g.ADJECTIVES):
            q = f"Where is the {adj} {noun}?"
            a = f"The {adj} {noun} is {place}."
            out.append((f"n{i:02d}a{j:02d}", q, a))
    return out


def split(pairs, num_train: int, num_heldout: int, seed: int = 0):
    """A seeded split: held-out pairs are adjective-noun combinations never trained on."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    if num_train + num_heldout > len(pairs):
        raise ValueError(f"{num_train} + {num_heldout} pairs asked, {len(pairs)} exist")
    return [pairs[i] for i in order[:num_train]], [pairs[i] for i in order[-num_heldout:]]


def make_dialogues(demo: str, out: str, num_train: int, num_heldout: int) -> dict[str, str]:
    """Step 1 (module docstring); returns the paths of train / heldout dialogues and tokens."""
    espeak.check_tools("the SFT demo")
    d = os.path.join(out, "dialogues")
    paths = {k: os.path.join(d, f"{k}.jsonl") for k in ("train", "heldout", "tokens")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    train, heldout = split(qa_pairs(), num_train, num_heldout)
    wavs: dict[str, np.ndarray] = {}
    for pid, q, a in train + heldout:
        for side, text, wpm, gap in (
            ("q", q, QUESTION_WPM, 0),
            ("a", a, ANSWER_WPM, ANSWER_WORD_GAP),
        ):
            path = os.path.join(d, "audio", f"{pid}_{side}.wav")
            if not os.path.exists(path):
                espeak.synthesize(text, path, VOICE, wpm, PITCH, word_gap=gap)
            wavs[f"{pid}_{side}"], _ = sf.read(path, dtype="float32")
    _, model = speech_tokenization.load_model(os.path.join(demo, "tokenizer"))
    refs = sorted(wavs)
    codes = speech_tokenization.tokenize_waveforms(model, [wavs[r] for r in refs])
    files.write_jsonl(
        paths["tokens"], [{"id": r, "tokens": c.tolist()} for r, c in zip(refs, codes)]
    )
    for name, pairs in (("train", train), ("heldout", heldout)):
        files.write_jsonl(
            paths[name],
            [
                {
                    "id": pid,
                    "turns": [
                        {"role": "user", "audio": f"{pid}_q", "text": q},
                        {"role": "assistant", "text": a, "audio": f"{pid}_a"},
                    ],
                }
                for pid, q, a in pairs
            ],
        )
    return paths


def _engine(ckpt: str, codes: int) -> engine.Engine:
    cfg = engine.EngineConfig(
        dtype="float32", max_context=1024, batch_size=8, steps_per_call=16, speech_codes=codes
    )
    eng = engine.Engine.from_checkpoint(ckpt, cfg)
    # The pre-trained model's meta says "demo"; read it with the role tokens of "demo_chat".
    lay = token_layout.get(LAYOUT)
    return engine.Engine(eng.model_cfg, lay, eng.params, eng.shardings, eng.mesh, eng.config)


def evaluate(ckpt: str, heldout: str, tokens: str, max_new_tokens: int = 256) -> dict:
    """Step 4 on one checkpoint: well-formed fraction and answer-text CER (module docstring)."""
    refs = dialogue_records.load_speech_tokens(tokens)
    codes = max(max(c) for c in refs.values()) + 1
    eng = _engine(ckpt, codes)
    lay = eng.layout
    tmpl = chat_template.ChatTemplate.for_layout(lay, lambda s: list(s.encode()), "chat")
    with open(heldout, encoding="utf-8") as f:
        dialogues = [json.loads(line) for line in f if line.strip()]
    params = engine.SamplingParams(
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        modality="interleave",
        stop_ids=tmpl.stop_ids,
    )
    reqs = []
    for dlg in dialogues:
        user = chat_template.UserTurn(speech=np.asarray(refs[dlg["turns"][0]["audio"]]))
        reqs.append(engine.Request(tmpl.chat_prompt([], user, None), params, seed=0))
    done = eng.generate(reqs)
    end = lay.special(chat_template.CHAT_STOPS[0])
    rows, answers, hyps = [], [], []
    for dlg, c in zip(dialogues, done, strict=True):
        speech = np.asarray(lay.is_audio(c.tokens), bool)
        text_ids = [int(i) for i in c.tokens[~speech] if i < lay.text_vocab_size]
        text = bytes(text_ids).decode("utf-8", errors="replace")
        ok = c.stop_id == end and bool(text_ids) and bool(speech.any())
        rows.append(
            {"id": dlg["id"], "well_formed": ok, "text": text, "speech_tokens": int(speech.sum())}
        )
        answers.append(dlg["turns"][1]["text"])
        hyps.append(text)
    rates = asr_metrics.error_rates(answers, hyps)
    return {
        "well_formed": float(np.mean([r["well_formed"] for r in rows])),
        "answer_cer": rates["cer"],
        "replies": rows,
    }


def run(
    demo: str,
    out: str,
    *,
    num_train: int = 160,
    num_heldout: int = 16,
    steps: int = 300,
    dropout: float = 0.5,
) -> dict:
    """Steps 1-4; returns (and writes to OUT/report.json) the before / after figures."""
    init = os.path.join(demo, "checkpoints")
    checkpoint.resolve(init)  # raises naming the path when `make demo` has not run
    paths = make_dialogues(demo, out, num_train, num_heldout)
    workdir = os.path.join(out, "run")
    records_dir = os.path.join(workdir, "sft")
    results = dialogue_records.write_dialogue_records(
        paths["train"],
        records_dir,
        tokenizer="bytes",
        layout=LAYOUT,
        speech_tokens=paths["tokens"],
        num_shards=1,
        max_tokens=512,
        process_index=0,
        process_count=1,
    )
    config = config_lib.load_config_file(
        SFT_CONFIG + f":steps={steps},init_from={init},dropout={dropout},data_root={records_dir}"
    )
    config.model.variant = config_lib.INIT_FROM  # the architecture of the pre-trained model
    before = evaluate(init, paths["heldout"], paths["tokens"])
    summary = lm.train(config, workdir)
    after = evaluate(os.path.join(workdir, "checkpoints"), paths["heldout"], paths["tokens"])
    report = {
        "dialogues": {"train": num_train, "heldout": num_heldout},
        "records": {k: t["records"] for k, (_, t) in results.items()},
        "steps": steps,
        "final_loss": summary.get("loss"),
        "before": before,
        "after": after,
    }
    files.write_json(os.path.join(out, "report.json"), report)
    return report
