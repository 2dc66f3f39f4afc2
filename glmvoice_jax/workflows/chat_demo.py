"""``make chat-demo``: one spoken question through the tiny models that ``make demo`` trained.

Inputs (from ``make demo``, workdir WORKDIR): the tiny GLM (WORKDIR/checkpoints) and the tiny
speech tokenizer (WORKDIR/tokenizer). ``prepare`` adds what the conversation needs:

* WORKDIR/chat/question.wav: the question spoken by espeak-ng (corpora/espeak.py), 16 kHz;
* a speech decoder: the one given, else a trained decoder in WORKDIR/decoder (a glmvoice-train
  workdir of the flow trainer) when it holds a checkpoint, else an **untrained** decoder of the
  ``tiny`` preset with the tokenizer's codebook (WORKDIR/chat/untrained_decoder: random weights,
  its audio is noise-like: it shows the streaming path and its latency, not speech quality).

Then glmvoice-chat runs one turn into WORKDIR/chat: turn-001.wav (the reply), turn-001.txt
(its text), turn-001.json (timings) and session.jsonl. The demo LM is a pre-trained base model
without chat roles, so the base template applies (glmvoice_jax/inference/chat_template.py): it
writes a text answer to the spoken question (mostly a transcript: the tiny model was trained on
ASR documents) and then speaks that text.
"""

from __future__ import annotations

import dataclasses
import os

from glmvoice_jax import checkpoint
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.corpora import espeak
from glmvoice_jax.inference import speech_tokenization
from glmvoice_jax.models.speech_decoder import config as decoder_config

QUESTION = "What did the sailor sell at the market yesterday?"
VOICE, SPEED_WPM, PITCH = "en-us", 150, 50


def _has_checkpoint(path: str) -> bool:
    try:
        checkpoint.resolve(path)
    except FileNotFoundError:
        return False
    return True


def prepare(workdir: str, decoder: str | None = None) -> dict[str, str]:
    """Writes the question and picks (or makes) the decoder; returns glmvoice-chat's inputs.

    Raises:
      FileNotFoundError: ``make demo`` has not run in ``workdir`` (naming what is missing), or
        espeak-ng / sox are not installed.
    """
    lm, tokenizer = workdir, os.path.join(workdir, "tokenizer")
    for what, path in (("the tiny GLM", lm), ("the tiny speech tokenizer", tokenizer)):
        if not _has_checkpoint(path):
            raise FileNotFoundError(f"{what} has no checkpoint under {path}; run `make demo` first")
    out = os.path.join(workdir, "chat")
    question = os.path.join(out, "question.wav")
    espeak.check_tools("make chat-demo")
    espeak.synthesize(QUESTION, question, VOICE, SPEED_WPM, PITCH)
    if decoder is None and _has_checkpoint(os.path.join(workdir, "decoder")):
        decoder = os.path.join(workdir, "decoder")
    if decoder is None:
        decoder = os.path.join(out, "untrained_decoder")
        if not _has_checkpoint(decoder):
            cfg, _ = speech_tokenization.load_model(tokenizer)
            tiny = decoder_config.VARIANTS["tiny"]
            flow = dataclasses.replace(tiny.flow, vocab_size=cfg.codebook_size)
            decoder_checkpoint.write_untrained(dataclasses.replace(tiny, flow=flow), decoder)
    return {
        "checkpoint": lm,
        "speech_tokenizer": tokenizer,
        "speech_decoder": decoder,
        "input": question,
        "output": out,
    }
