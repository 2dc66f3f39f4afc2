r"""A new voice: fine-tune a trained flow on one speaker with truncated samples (issue 19, item 3).

The paper's recipe (glm4voice.md, decoder): after pre-training on all speech, the flow is
fine-tuned on one speaker, each sample cut to its first n·b seconds with b = 0.8 s (10 tokens at
12.5 Hz, the streaming block), n drawn per row, so the voice is learnt at every streaming prefix.
This is configs/decoder_tiny.py with ``init_from`` (the flow to start from: a trained decoder,
e.g. WORKDIR/decoder of a decoder_tiny run, or glmvoice-import of glm-4-voice-decoder at release
dims with ``model.variant=glm4_voice_decoder``), ``input.truncate_seconds = b``, a lower learning
rate and no warm-up. The vocoder is left as it is (Griffin-Lim at tiny scale; the release HiFT
with ``vocoder=hift``): only the flow learns the voice.

Command (one speaker's manifest {"id", "audio"} and its glmvoice-tokenize tokens):
    glmvoice-train --config configs/decoder_new_voice.py:vocab=256,rate=12.5 --workdir runs/voice \
        --config.init_from=runs/decoder_demo/flow/decoder \
        --config.input.manifest=VOICE.jsonl --config.input.tokens=VOICE_TOKENS.jsonl
Args: ``vocab``, ``rate`` (the tokenizer's, as for decoder_tiny), ``steps``, ``block`` (b, s).
Expected: the held-out CFM loss on the speaker's utterances falls from its step-0 value (the
starting flow's); docs/decoder_training.md.
"""

import os

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, vocab=256, rate=12.5, steps=300, block=0.8)
    c = config_lib.load_config_file(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "decoder_tiny.py")
        + f":vocab={arg.vocab},rate={arg.rate},steps={arg.steps}"
    )
    c.init_from = ""  # required: the flow to fine-tune (a decoder checkpoint or release dir)
    c.input.truncate_seconds = arg.block
    c.input.heldout_every = 5  # one speaker's corpus is small
    c.schedule = dict(decay="constant", warmup_steps=0, peak_lr=2e-4, end_lr=2e-4)
    c.ckpt.every_steps = 100
    c.evals.every_steps = 100
    return c
