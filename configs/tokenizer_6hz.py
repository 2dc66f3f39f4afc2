r"""Bitrate ablation: 6.25 Hz (avg-pool x8), 65536 codes, 100 bps (glm4voice.md §3).

Same recipe as configs/tokenizer_12hz.py, only the pooling kernel (8) and codebook differ. The
paper's 6.25 Hz ASR numbers are not published (§3 footnote): measure our own.

Command:
    glmvoice-train --config configs/tokenizer_6hz.py --workdir $WORKDIR/tok6 \
        --config.init_from=/data/whisper-large-v3 --config.input.train_manifest=... \
        --config.input.heldout_manifest=...
    glmvoice-train --config configs/tokenizer_6hz.py:tiny --workdir runs/tok6_tiny   # CPU
Expected: fill in after the first run.
"""

import os

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, tiny=False, steps=0)
    steps = arg.steps or (2500 if arg.tiny else 58_600)  # see tokenizer_12hz.py
    # pooling x8 -> 6.25 Hz; log2(65536) = 16 bits -> 100 bps. Tiny: 4096 codes (75 bps).
    model = dict(pooling_kernel=8, codebook_size=4096 if arg.tiny else 65536)
    return _base().base("glm4_voice_tokenizer_6p25hz", tiny=arg.tiny, steps=steps, model=model)


def _base():
    """configs/tokenizer_base.py: every default of the speech-tokenizer trainer."""
    here = os.path.dirname(os.path.abspath(__file__))
    return config_lib.load_config_module(os.path.join(here, "tokenizer_base.py"))
