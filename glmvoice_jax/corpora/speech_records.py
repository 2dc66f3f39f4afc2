r"""Speech tokens -> ``speech``, ``asr`` or ``tts`` records (templates: data/prompts.py).

Input: the speech tokenizer's output, JSONL lines ``{"id": str, "tokens": [codebook indices]}``
(``glmvoice-tokenize``), and for ASR / TTS the transcripts: a manifest JSONL
(``{"id", "text", ...}``) or a TFDS speech dataset built by ``build_tfds.py`` (its
``manifest.<split>.jsonl`` is read). One record per utterance:

  --kind speech  [gMASK]<sop><|begin_of_audio|>{speech}<|end_of_audio|>         loss everywhere
  --kind asr     ... {speech} ... {text}<|endoftext|>                           loss on the text
  --kind tts     [gMASK]<sop>{text}<|begin_of_audio|>{speech}<|end_of_audio|>   loss on speech

TTS records are also the training data of the text-to-token model (configs/text_to_token_tiny.py).
Skipped and listed: undecodable / bad JSON lines, missing or out-of-range tokens, utterances
without a transcript or with an empty one, records over --max_tokens (default 8192, the pre-training
sequence length: a longer ASR / TTS sample would be cut between prompt and target).

Usage:
  python -m data_pipelines.speech_records --tokens 'tok/*.jsonl' --kind asr \
      --transcripts DATA_DIR/librispeech_local/1.0.0 --tokenizer glm-4/tokenizer.model \
      --out DIR/asr
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from glmvoice_jax.corpora import corpus_io, shard_job
from glmvoice_jax.data import prompts, records
from glmvoice_jax.data import token_layout as token_layout_lib

KINDS = ("speech", "asr", "tts")


def load_transcripts(spec: str, split: str = "train") -> dict[str, str]:
    """Id -> transcript from a manifest JSONL or a TFDS speech dataset folder.

    Raises:
      ValueError: naming the file and line of a bad manifest line.
    """
    version_dir = corpus_io.tfds_version_dir(spec)
    path = spec
    if version_dir is not None:
        path = f"{version_dir}/manifest.{split}.jsonl"
    out: dict[str, str] = {}
    corpus = corpus_io.LineCorpus(path)
    for item in corpus.iter_range(range(len(corpus))):
        if item.error:
            raise ValueError(f"transcripts {path}: {item.error[1]}")
        text = item.fields.get("text")
        if "id" in item.fields and isinstance(text, str):
            out[str(item.fields["id"])] = text
    return out


def _codes(fields: dict, num_audio: int) -> np.ndarray:
    tokens = fields.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ValueError(f"'tokens' must be a non-empty list, got {json.dumps(tokens)[:80]}")
    codes = np.asarray(tokens)
    if codes.dtype.kind not in "iu":
        raise ValueError("'tokens' must hold integers")
    if codes.min() < 0 or codes.max() >= num_audio:
        raise ValueError(f"token {int(codes.max())} outside the codebook [0, {num_audio})")
    return codes


def write_speech_records(
    tokens: str,
    out_dir: str,
    *,
    kind: str,
    layout: str,
    transcripts: str | None = None,
    tokenizer: str | None = None,
    source: str | None = None,
    num_shards: int = 16,
    split: str = "train",
    max_tokens: int = 8192,
    process_index: int | None = None,
    process_count: int | None = None,
    progress: bool = True,
    runner: shard_job.Runner | None = None,
) -> tuple[shard_job.JobPlan, dict]:
    """Runs the job; returns (plan, totals). See the module docstring.

    ``runner``: who writes the shards (``shard_job.run``); e.g. ``beam_runner.BeamRunner``.
    """
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")
    lay = token_layout_lib.get(layout)
    if lay.num_audio_tokens == 0:
        raise ValueError(f"token layout {layout!r} has no speech tokens")
    texts, tok = None, None
    if kind != "speech":
        if not transcripts or not tokenizer:
            raise ValueError(f"--kind {kind} needs --transcripts and --tokenizer")
        texts = load_transcripts(transcripts, split)
        tok = corpus_io.load_tokenizer(tokenizer, lay)
    corpus = corpus_io.LineCorpus(tokens)
    source = source or kind
    if process_index is None or process_count is None:
        process_index, process_count = shard_job.default_process()
    plan = shard_job.JobPlan(out_dir, source, len(corpus), num_shards, process_index, process_count)

    def produce(shard: int, r: range, log: shard_job.ShardLog) -> Iterator:
        del shard
        for item in corpus.iter_range(r):
            if item.error:
                log.error(item.index, item.id, *item.error)
                continue
            try:
                codes = _codes(item.fields, lay.num_audio_tokens)
            except ValueError as e:
                log.error(item.index, item.id, "bad_tokens", str(e))
                continue
            if kind == "speech":
                yield item.index, item.id, prompts.speech(codes, lay, source=source)
                continue
            text = texts.get(item.id)
            if text is None:
                log.error(item.index, item.id, "no_transcript", "id not in --transcripts")
                continue
            if not text.strip():
                log.error(item.index, item.id, "empty_text")
                continue
            try:
                ids = tok.encode(text, add_prefix=False)
                build = prompts.asr if kind == "asr" else prompts.tts
                args = (codes, ids) if kind == "asr" else (ids, codes)
                ex = build(*args, lay, source=source)
            except ValueError as e:
                log.error(item.index, item.id, "bad_tokens", str(e))
                continue
            log.add("text_tokens", len(ids))
            yield item.index, item.id, ex

    params = dict(
        job="speech_records",
        kind=kind,
        tokens=tokens,
        transcripts=transcripts,
        tokenizer=tokenizer,
        layout=layout,
        split=split,
        max_tokens=max_tokens,
        record_version=records.VERSION,
    )
    totals = shard_job.run(
        plan,
        produce,
        params=params,
        layout=lay,
        max_tokens=max_tokens,
        progress=progress,
        runner=runner,
    )
    return plan, totals
