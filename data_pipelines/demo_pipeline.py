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
   held-out transcripts, transcribed by the tokenizer's ASR head (token_transcriber.py), CER
   against the transcripts; next to the CER of the real tokens of the same utterances (the
   ceiling the tokenizer sets) and the length ratio sampled / real tokens.

``configs/demo_tiny.py`` then pretrains the tiny GLM on ``W/corpus`` (``make demo``).

Usage: python -m data_pipelines.demo_pipeline --workdir runs/demo [--tokenizer_steps 300]

The command line of ``glmvoice_jax.workflows.demo`` (the job's code).
"""

from __future__ import annotations

from absl import app, flags, logging

from glmvoice_jax.workflows.demo import run


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Demo workdir (make demo: runs/demo).", required=True)
    flags.DEFINE_integer("tokenizer_steps", 300, "Speech-tokenizer training steps.")
    flags.DEFINE_integer("t2t_steps", 100, "Text-to-token model training steps.")
    flags.DEFINE_integer("num_sentences", 0, "Use only the first N espeak sentences (0 = all).")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines drown the progress
    patterns = run(
        f.workdir,
        tokenizer_steps=f.tokenizer_steps,
        t2t_steps=f.t2t_steps,
        max_sentences=f.num_sentences,
    )
    for name, globs in patterns.items():
        print(f"  {name}: {globs}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
