r"""The four demo sources (text, speech_only, asr + tts, interleaved) from a small speech corpus.

One call runs the real corpus jobs on demo-sized data, in the ``demo`` token layout (UTF-8 bytes
as text, 512 speech codes):

1. text documents: the bundled sentences (``glmvoice_jax/corpora/assets/sentences.txt``) grouped
into
   documents -> ``text_records`` -> ``OUT/text``;
2. the speech tokens of the corpus (``glmvoice-tokenize`` output, ``{"id", "tokens"}``) ->
   ``speech_records`` -> ``OUT/speech_only``, ``OUT/asr``, ``OUT/tts`` (transcripts from the
   manifest, e.g. the espeak-ng corpus' ``train.jsonl``);
3. the tiny text-to-token model (configs/text_to_token_tiny.py) trained on ``OUT/tts`` for
   ``t2t_steps`` steps -> ``OUT/t2t``;
4. the text documents interleaved with sampled speech spans -> ``OUT/interleaved``.

Every step is resumable: rerunning skips finished shards and resumes the text-to-token training
from its checkpoints. Without a speech tokenizer, ``text_derived_tokens`` writes a stand-in
tokens file (each text byte -> 2 codes of a seeded table, plus seeded noise): enough to exercise
the jobs and the statistics, not speech.

Usage (Python): ``patterns = build_demo_sources(out_dir, manifest=..., tokens=...)`` returns
source -> list of shard globs, ready for ``config.input.sources[name].paths``. CLI:
  python -m data_pipelines.demo_sources --out runs/demo/sources \
      --manifest runs/demo/espeak/train.jsonl --tokens runs/demo/tokens.jsonl
"""

from __future__ import annotations

import json
import os

import numpy as np

from glmvoice_jax import config_lib, files
from glmvoice_jax.corpora import espeak_corpus, interleave_records, speech_records, text_records
from glmvoice_jax.data import interleave, token_layout
from glmvoice_jax.inference import sampling
from glmvoice_jax.trainers import lm

LAYOUT = "demo"
# How the interleaving job samples the tiny text-to-token model (speech tokens per text byte: the
# espeak corpus at 12.5 Hz has ~0.8, so 3 per byte + 8 bounds every span).
T2T_SAMPLING = sampling.SamplingConfig(max_len_ratio=3.0, max_len_extra=8, batch_size=64)
# The bundled sentences (glmvoice_jax/corpora/assets/sentences.txt, as the espeak-ng corpus reads
# them).
read_sentences = espeak_corpus.read_sentences


def bundled_text_docs(num_docs: int, seed: int = 0) -> list[str]:
    """Documents of 3-12 bundled sentences each, drawn with a seeded generator."""
    sentences = read_sentences()
    rng = np.random.default_rng([seed, 77])
    docs = []
    for _ in range(num_docs):
        idx = rng.choice(len(sentences), size=int(rng.integers(3, 13)), replace=False)
        docs.append(" ".join(sentences[i] for i in idx))
    return docs


def text_derived_tokens(manifest: str, out_path: str, *, seed: int = 0) -> str:
    """A stand-in speech-tokens file: 2 seeded codes per transcript byte, 5% of them noise."""
    layout = token_layout.get(LAYOUT)
    table = np.random.default_rng([seed, 4242]).integers(layout.num_audio_tokens, size=(256, 2))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".incomplete"
    with open(manifest, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            codes = table[np.frombuffer(row.get("text", "").encode("utf-8"), np.uint8)].ravel()
            rng = np.random.default_rng([seed, n])
            noise = rng.random(codes.size) < 0.05
            codes[noise] = rng.integers(layout.num_audio_tokens, size=int(noise.sum()))
            out.write(json.dumps({"id": row["id"], "tokens": codes.tolist()}) + "\n")
    os.replace(tmp, out_path)
    return out_path


def build_demo_sources(
    out_dir: str,
    *,
    manifest: str,
    tokens: str,
    num_text_docs: int = 600,
    num_interleaved_docs: int = 300,
    num_shards: int = 4,
    t2t_steps: int = 150,
    sampler: sampling.SpeechSampler | sampling.LookupSampler | None = None,
    text_input: tuple[str, str] | None = None,
    interleaved_input: tuple[str, str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Builds the four demo sources under ``out_dir``; see the module docstring.

    ``sampler``: use this text-to-token sampler instead of training the tiny model (e.g.
    ``sampling.LookupSampler(token_layout.get("demo"))`` for a fast, model-free demo).
    ``text_input`` / ``interleaved_input``: (corpus spec, split) of the text documents, e.g. a
    TFDS text dataset (glmvoice_jax/workflows/demo.py); default: bundled documents as JSONL.

    Returns:
      {"text", "speech_only", "asr_tts", "interleaved"} -> list of shard globs.
    """
    os.makedirs(os.path.join(out_dir, "inputs"), exist_ok=True)
    docs = {
        "text": bundled_text_docs(num_text_docs, seed),
        "interleaved": bundled_text_docs(num_interleaved_docs, seed + 1),
    }
    given = {"text": text_input, "interleaved": interleaved_input}
    inputs = {}
    for name, texts in docs.items():
        if given[name] is not None:
            inputs[name] = given[name]
            continue
        path = os.path.join(out_dir, "inputs", f"{name}.jsonl")
        inputs[name] = (path, "train")
        if not os.path.exists(path):
            files.write_jsonl(path, ({"id": f"{name}{i}", "text": t} for i, t in enumerate(texts)))
    common = dict(layout=LAYOUT, num_shards=num_shards, process_index=0, process_count=1)
    plans = {}
    plans["text"], _ = text_records.write_text_records(
        inputs["text"][0],
        os.path.join(out_dir, "text"),
        split=inputs["text"][1],
        tokenizer="bytes",
        progress=progress,
        **common,
    )
    for kind, folder in (("speech", "speech_only"), ("asr", "asr"), ("tts", "tts")):
        plans[folder], _ = speech_records.write_speech_records(
            tokens,
            os.path.join(out_dir, folder),
            kind=kind,
            source=folder,
            transcripts=None if kind == "speech" else manifest,
            tokenizer=None if kind == "speech" else "bytes",
            progress=progress,
            **common,
        )
    if sampler is None:
        sampler = _train_text_to_token(out_dir, t2t_steps, progress)
    plans["interleaved"], _ = interleave_records.write_interleaved_records(
        inputs["interleaved"][0],
        os.path.join(out_dir, "interleaved"),
        split=inputs["interleaved"][1],
        sampler=sampler,
        tokenizer="bytes",
        span_cfg=interleave.SpanConfig(),
        seed=seed,
        num_shards=num_shards,
        process_index=0,
        process_count=1,
        progress=progress,
        checkpoint_id=type(sampler).__name__,
    )
    return {
        "text": [plans["text"].pattern()],
        "speech_only": [plans["speech_only"].pattern()],
        "asr_tts": [plans["asr"].pattern(), plans["tts"].pattern()],
        "interleaved": [plans["interleaved"].pattern()],
    }


def _train_text_to_token(out_dir: str, steps: int, progress: bool) -> sampling.SpeechSampler:
    """Trains (or resumes) configs/text_to_token_tiny.py on OUT/tts; returns its sampler."""
    t2t_dir = os.path.join(out_dir, "t2t")
    config = config_lib.load_config_file(
        os.path.join(
            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            "configs",
            "text_to_token_tiny.py",
        )
        + f":data={os.path.join(out_dir, 'tts')},steps={steps}"
    )
    config.metrics.console = progress
    lm.train(config, t2t_dir)
    return sampling.SpeechSampler.from_checkpoint(t2t_dir, T2T_SAMPLING)
