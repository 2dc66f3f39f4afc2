r"""The four demo sources (text, speech_only, asr + tts, interleaved) from a small speech corpus.

Usage (Python): ``patterns = build_demo_sources(out_dir, manifest=..., tokens=...)`` returns

The command line of ``glmvoice_jax.workflows.demo_sources``
(which documents the job: inputs, outputs, errors).
"""

from __future__ import annotations

import os

from absl import flags, logging

from glmvoice_jax.cli import doors
from glmvoice_jax.data import token_layout
from glmvoice_jax.inference import sampling
from glmvoice_jax.workflows.demo_sources import LAYOUT, build_demo_sources, text_derived_tokens


def _define_flags() -> None:
    flags.DEFINE_string("out", None, "Output folder.", required=True)
    flags.DEFINE_string("manifest", None, "Speech manifest JSONL (id, audio, text).", required=True)
    flags.DEFINE_string("tokens", None, "Speech tokens JSONL; default: text-derived stand-in.")
    flags.DEFINE_enum(
        "t2t",
        "train",
        ["train", "lookup"],
        "Train the tiny text-to-token model, or use the model-free sampling.LookupSampler (fast).",
    )
    flags.DEFINE_integer("t2t_steps", 150, "Text-to-token training steps.")
    flags.DEFINE_integer("num_shards", 4, "Shards per source.")
    flags.DEFINE_integer("seed", 0, "Seed.")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax/Grain INFO lines drown the progress
    tokens = f.tokens or text_derived_tokens(
        f.manifest, os.path.join(f.out, "inputs", "text_derived_tokens.jsonl"), seed=f.seed
    )
    patterns = build_demo_sources(
        f.out,
        manifest=f.manifest,
        tokens=tokens,
        t2t_steps=f.t2t_steps,
        sampler=sampling.LookupSampler(token_layout.get(LAYOUT)) if f.t2t == "lookup" else None,
        num_shards=f.num_shards,
        seed=f.seed,
    )
    for name, globs in patterns.items():
        print(f"{name}: {globs}")


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
