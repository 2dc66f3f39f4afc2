r"""``make chat-demo``: one spoken question through the tiny ``make demo`` models.

Usage: python -m data_pipelines.chat_demo --workdir runs/demo [--decoder CKPT]

Prepares the inputs (``glmvoice_jax.workflows.chat_demo``, which documents them) and runs one
glmvoice-chat turn into WORKDIR/chat (an earlier turn there is replaced); its transcript and
timings are printed.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from absl import flags, logging

from glmvoice_jax.cli import doors
from glmvoice_jax.workflows import chat_demo


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The make demo workdir (runs/demo).", required=True)
    flags.DEFINE_string("decoder", None, "Speech-decoder checkpoint (default: see the workflow).")


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    inputs = chat_demo.prepare(f.workdir, f.decoder)
    out = inputs["output"]
    for old in glob.glob(os.path.join(out, "turn-*")) + [os.path.join(out, "session.jsonl")]:
        if os.path.isfile(old):
            os.remove(old)
    print(f"question ({chat_demo.QUESTION!r}): {inputs['input']}")
    print(f"decoder: {inputs['speech_decoder']}")
    args = [f"--{k}={v}" for k, v in inputs.items()]
    subprocess.run(
        [sys.executable, "-m", "glmvoice_jax.cli.chat", *args, "--max_new_tokens=200",
         "--max_context=1024"],
        check=True,
    )  # fmt: skip
    with open(os.path.join(out, "turn-001.json"), encoding="utf-8") as fh:
        turn = json.load(fh)
    keep = (
        "tokenize_secs",
        "first_text_token_secs",
        "first_speech_token_secs",
        "first_audio_secs",
        "generate_secs",
        "tokens_per_sec",
        "audio_secs",
        "total_secs",
    )
    print("timings (first turn of a process: compilation included):")
    for k in keep:
        v = turn["timings"][k]
        print(f"  {k:24s} {v:.3f}" if isinstance(v, float) else f"  {k:24s} {v}")
    print(f"reply: {os.path.join(out, 'turn-001.wav')}  text: {turn['reply_text']!r}")


if __name__ == "__main__":
    _define_flags()
    doors.run(main, __doc__)
