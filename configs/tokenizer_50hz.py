r"""Bitrate ablation: 50 Hz (no pooling), 4096 codes, 600 bps (glm4voice.md §3).

Same recipe as configs/tokenizer_12hz.py, only the pooling kernel (1) and codebook differ.

Command:
    glmvoice-train --config configs/tokenizer_50hz.py --workdir $WORKDIR/tok50 \
        --config.init_from=/data/whisper-large-v3 --config.input.train_manifest=... \
        --config.input.heldout_manifest=...
    glmvoice-train --config configs/tokenizer_50hz.py:tiny --workdir runs/tok50_tiny   # CPU
Expected: LibriSpeech test-clean WER about 1.85 (paper Table 1); fill in after the first run.
"""

import os

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, tiny=False, steps=0)
    steps = arg.steps or (2500 if arg.tiny else 58_600)  # see tokenizer_12hz.py
    # no pooling -> 50 Hz; log2(4096) = 12 bits -> 600 bps. Tiny: 256 codes (400 bps).
    model = dict(pooling_kernel=1, codebook_size=256 if arg.tiny else 4096)
    return _base().base("glm4_voice_tokenizer_50hz", tiny=arg.tiny, steps=steps, model=model)


def _base():
    """configs/tokenizer_base.py: every default of the speech-tokenizer trainer."""
    here = os.path.dirname(os.path.abspath(__file__))
    return config_lib.load_config_module(os.path.join(here, "tokenizer_base.py"))
