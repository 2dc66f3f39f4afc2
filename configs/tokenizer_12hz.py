r"""The GLM-4-Voice speech tokenizer: 12.5 Hz, 16384 codes, 175 bps (glm4voice.md §2, §12 #1-8).

whisper-large-v3 dims, block-causal (200 frames = 4 s), avg-pool x4 and the EMA VQ after encoder
layer 16, trained as a whole ASR model (encoder + VQ + Whisper decoder) on CE + commitment.

Command (full size; initialise from whisper-large-v3 and use its tokenizer):
    glmvoice-train --config configs/tokenizer_12hz.py --workdir $WORKDIR/tok12 \
        --config.init_from=/data/whisper-large-v3 \
        --config.input.train_manifest=/data/asr/train.jsonl \
        --config.input.heldout_manifest=/data/asr/heldout.jsonl
Hardware: sized for a TPU/GPU pod (4096 utterances of <= 30 s per step). Expected: LibriSpeech
test-clean WER about 2.1 (the paper's Table 1); fill in after the first run.

Command (CPU demo, from scratch on the espeak-ng corpus it synthesises on first use):
    glmvoice-train --config configs/tokenizer_12hz.py:tiny --workdir runs/tok12_tiny
Hardware: 2 CPU cores (shared, load 3-8). First run (2500 steps, 23 min): codebook usage 84-100%
throughout (256 codes, 100 bps); held-out CER on unseen grammar sentences 67% (step 250) -> 53%
(1000) -> 44% (1500) -> 36.5% (2000) -> 34.0% (2500); training loss 0.03 by then (overfitting).
"""

import ml_collections as mlc

from glmvoice_jax import config_lib
from glmvoice_jax.trainers import speech_tokenizer_setup as setup


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, tiny=False, steps=0)
    # Full: ~1M hours (supervised + 700k h pseudo-labelled, §2.9) = 1.2e8 windows of 30 s;
    # 2 epochs / 4096 per step = 58,600 steps (the data size is an unverified estimate).
    steps = arg.steps or (2500 if arg.tiny else 58_600)
    # pooling x4 -> 12.5 Hz; log2(16384) = 14 bits -> 175 bps. Tiny: 256 codes (100 bps).
    model = dict(pooling_kernel=4, codebook_size=256 if arg.tiny else 16384)
    return setup.default_config("glm4_voice_tokenizer", tiny=arg.tiny, steps=steps, model=model)
