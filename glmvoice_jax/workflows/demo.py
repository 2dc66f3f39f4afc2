r"""The corpus of ``make demo``: espeak-ng speech + bundled text, through the real jobs.

Stages, each resumable (a finished stage's output is found and kept; rerunning after a kill goes
on where it stopped):

1. ``W/espeak``: the espeak-ng corpus (glmvoice_jax/corpora/espeak_corpus.py, grammar sentences).
2. ``W/tfds``: TFDS datasets (array_record, no TensorFlow) built by
glmvoice_jax/corpora/tfds_builders.py:
   ``demo_speech`` (splits train / heldout, audio arrays + transcripts) and ``demo_text`` (the
   bundled sentences grouped into documents; splits ``text`` and ``interleave``).
3. ``W/tokenizer``: the tiny 12.5 Hz speech tokenizer (configs/tokenizer_12hz.py:tiny) trained
   from scratch on ``demo_speech`` for ``tokenizer_steps`` steps by the real trainer.
4. ``W/tokens``: every utterance tokenized with it (glmvoice_jax/inference/tokenizing_job.py, the
   ``glmvoice-tokenize`` job).
5. ``W/corpus``: the four pretraining sources in the record schema
(glmvoice_jax/workflows/demo_sources.py:
   text, speech_only, asr + tts, and interleaved, whose speech spans the tiny text-to-token model
   samples after training on the tts records).
6. ``W/corpus/t2t_quality.json``: the text-to-token model on held-out pairs: its speech tokens for
   held-out transcripts, transcribed by the tokenizer's ASR head (transcription.py), CER
   against the transcripts; next to the CER of the real tokens of the same utterances (the
   ceiling the tokenizer sets) and the length ratio sampled / real tokens.

``configs/demo_tiny.py`` then pretrains the tiny GLM on ``W/corpus`` (``make demo``).

Usage: python -m data_pipelines.demo_pipeline --workdir runs/demo [--tokenizer_steps 300]
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from glmvoice_jax import config_lib, files
from glmvoice_jax.corpora import espeak_corpus, tfds_builders
from glmvoice_jax.evals import asr_metrics
from glmvoice_jax.inference import tokenizing_job, transcription
from glmvoice_jax.inference.sampling import SpeechSampler
from glmvoice_jax.trainers import speech_tokenizer
from glmvoice_jax.workflows import demo_sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_CONFIG = os.path.join(REPO, "configs", "tokenizer_12hz.py")


def _stage(name: str, n: int, total: int = 6):
    print(f"[demo {n}/{total}] {name}", flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"          done in {time.perf_counter() - start:.0f} s", flush=True)


def build_tfds(workdir: str, manifests: dict[str, str], num_docs: dict[str, int]) -> dict:
    """The TFDS speech and text datasets of the demo; returns their version folders."""
    texts_dir = os.path.join(workdir, "tfds", "inputs")
    os.makedirs(texts_dir, exist_ok=True)
    text_src = {}
    for split, n in num_docs.items():
        path = os.path.join(texts_dir, f"{split}.jsonl")
        text_src[split] = path
        if not os.path.exists(path):
            docs = demo_sources.bundled_text_docs(n, seed=len(split))
            files.write_jsonl(path, ({"id": f"{split}{i}", "text": t} for i, t in enumerate(docs)))
    data_dir = os.path.join(workdir, "tfds")
    return {
        "speech": tfds_builders.build(
            "manifest", dict(manifests), data_dir, "demo_speech", sample_rate=16000
        ),
        "text": tfds_builders.build("text", text_src, data_dir, "demo_text"),
    }


def train_tokenizer(workdir: str, manifests: dict[str, str], steps: int) -> str:
    """configs/tokenizer_12hz.py:tiny on the given manifests; returns the checkpoint workdir."""
    out = os.path.join(workdir, "tokenizer")
    config = config_lib.load_config_file(f"{TOKENIZER_CONFIG}:tiny,steps={steps}")
    config.input.espeak_corpus_dir = ""
    config.input.train_manifest = manifests["train"]
    config.input.heldout_manifest = manifests["heldout"]
    config.evals.every_steps = steps  # one held-out CER at the end
    config.ckpt.every_steps = min(config.ckpt.every_steps, steps)
    speech_tokenizer.train(config, out)
    return out


def tokenize(workdir: str, tokenizer: str, manifests: dict[str, str]) -> dict[str, str]:
    """Speech tokens of both splits; returns {split: tokens.jsonl}."""
    out = {}
    for split, manifest in manifests.items():
        path = os.path.join(workdir, "tokens", f"{split}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tokenizing_job.tokenize_files(tokenizer, manifest, path, log=lambda s: None)
        out[split] = path
    return out


def t2t_quality(workdir: str, tokenizer: str, manifest: str, tokens: str, n: int = 64) -> dict:
    """Text-to-token model vs real tokens on ``n`` held-out utterances (see stage 6)."""
    out_path = os.path.join(workdir, "corpus", "t2t_quality.json")
    if os.path.exists(out_path):
        with open(out_path) as f:
            return json.load(f)
    with open(manifest, encoding="utf-8") as f:
        texts = {str(r["id"]): r["text"] for r in map(json.loads, filter(str.strip, f))}
    with open(tokens, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()][:n]
    refs = [texts[str(r["id"])] for r in rows]
    real = [np.asarray(r["tokens"], np.int32) for r in rows]
    # The settings the interleaving job sampled with (demo_sources._train_text_to_token).
    sampler = SpeechSampler.from_checkpoint(
        os.path.join(workdir, "corpus", "t2t"), demo_sources.T2T_SAMPLING
    )
    sampled = sampler.sample([np.frombuffer(t.encode(), np.uint8) for t in refs], range(len(refs)))
    asr = transcription.TokenTranscriber(tokenizer)
    result = {
        "utterances": len(rows),
        "t2t_cer": asr_metrics.error_rates(refs, asr.transcribe(sampled))["cer"],
        "real_tokens_cer": asr_metrics.error_rates(refs, asr.transcribe(real))["cer"],
        "length_ratio": sum(map(len, sampled)) / max(1, sum(map(len, real))),
    }
    files.write_json(out_path, result)
    return result


def run(
    workdir: str, *, tokenizer_steps: int = 300, t2t_steps: int = 100, max_sentences: int = 0
) -> dict:
    """All stages; returns the source -> shard globs of ``W/corpus``."""
    workdir = os.path.abspath(workdir)
    t = _stage("espeak-ng corpus (grammar sentences)", 1)
    espeak = espeak_corpus.make_corpus(
        os.path.join(workdir, "espeak"),
        max_sentences=max_sentences or None,
        variants_per_sentence=1,
        sentences_path=espeak_corpus.SENTENCE_SETS["grammar"],
    )
    _done(t)
    t = _stage("TFDS datasets demo_speech + demo_text (array_record)", 2)
    datasets = build_tfds(workdir, espeak, {"text": 600, "interleave": 300})
    # The speech builder lists every kept utterance next to its split (absolute audio paths).
    manifests = {s: os.path.join(datasets["speech"], f"manifest.{s}.jsonl") for s in espeak}
    _done(t)
    t = _stage(f"tiny 12.5 Hz speech tokenizer, {tokenizer_steps} steps from scratch", 3)
    tokenizer = train_tokenizer(workdir, manifests, tokenizer_steps)
    _done(t)
    t = _stage("tokenize the corpus (glmvoice-tokenize job)", 4)
    tokens = tokenize(workdir, tokenizer, manifests)
    _done(t)
    t = _stage("pretraining records: text, speech_only, asr + tts, interleaved", 5)
    patterns = demo_sources.build_demo_sources(
        os.path.join(workdir, "corpus"),
        manifest=datasets["speech"],
        tokens=tokens["train"],
        text_input=(datasets["text"], "text"),
        interleaved_input=(datasets["text"], "interleave"),
        t2t_steps=t2t_steps,
    )
    _done(t)
    t = _stage("text-to-token quality on held-out pairs (tokenizer's ASR head)", 6)
    q = t2t_quality(workdir, tokenizer, manifests["heldout"], tokens["heldout"])
    print(
        f"          {q['utterances']} held-out transcripts: CER of the text-to-token model's "
        f"tokens {100 * q['t2t_cer']:.1f}% vs the real tokens' {100 * q['real_tokens_cer']:.1f}%"
        f" (length ratio {q['length_ratio']:.2f})"
    )
    _done(t)
    return patterns
