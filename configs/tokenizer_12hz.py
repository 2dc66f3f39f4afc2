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
    nice -n 5 glmvoice-train --config configs/tokenizer_12hz.py:tiny --workdir runs/tok12_tiny
Corpus: "grammar_6k", 6000 sentences over a 108-word grammar (5400 train = 4.3 h, one voice
each; every 10th held out; the evals are the first 64 held-out sentences, the same as those of
the earlier 1200-sentence corpus). Synthesis on first use: ~2 min wall, 537 MB in the workdir.
Hardware: 2 shared vCPUs under load 4-10. Measured (bit-identical in two runs; CPU = user+sys
of the training process, all threads, since start-up; wall = the train loop, evals excluded):
    step   wall min  CPU min  held-out CER  WER    usage  codebook ppl (of 256)
     250      5.4      3.1       68.9%      84.4%    93%    18
     500     11.5      5.5       62.7%      86.4%    91%    20
    1000     20.5     10.1       60.0%      73.8%   100%    51
    1500     29.6     14.7       48.1%      60.0%   100%   111
    2000     38.6     19.4       31.7%      41.3%   100%   146
    2250     43.0     21.7       26.1%      32.3%   100%   151
    2500     46.1     24.0       24.2%      30.2%   100%   161
Whole command (synthesis, start-up, compile, final eval): 25.5 CPU-min, 49 min wall. Training
loss (plain CE) 0.24 at the end: no longer overfitting. Earlier, on the 1200-sentence corpus
with no label smoothing: CER 34.0% at 2500 steps, training loss 0.03 (overfitting).
Ablations (CER at step 1000 / 2500): the 1200-sentence corpus with label smoothing 0.1: 55.4%
/ 31.6% (training loss 0.12, CER flat at 35% over steps 1750-2000); the 6k corpus with label
smoothing 0 instead of 0.1: 66.1% / 43.0%. Either lever alone misses 30%. On the 6k corpus,
SpecAugment (2 freq <= 27 bins + 2 time <= 20 frames) on: 66.7% at step 1000 (stopped there);
sentencepiece vocab 512 (word pieces) instead of 320: 61.9% at 1000, 65.1% at 1250 (stopped).
"""

import os

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, tiny=False, steps=0)
    # Full: ~1M hours (supervised + 700k h pseudo-labelled, §2.9) = 1.2e8 windows of 30 s;
    # 2 epochs / 4096 per step = 58,600 steps (the data size is an unverified estimate).
    steps = arg.steps or (2500 if arg.tiny else 58_600)
    # pooling x4 -> 12.5 Hz; log2(16384) = 14 bits -> 175 bps. Tiny: 256 codes (100 bps).
    model = dict(pooling_kernel=4, codebook_size=256 if arg.tiny else 16384)
    if not arg.tiny:
        # Per-layer remat: without it the 4096 x 30 s step needs 320 GiB of temporaries per
        # v5p chip; with it 48.3 GiB on v5p-128 and 18.6 GiB on v6e-256 (docs/aot.md).
        model["remat"] = True
    return _base().base("glm4_voice_tokenizer", tiny=arg.tiny, steps=steps, model=model)


def _base():
    """configs/tokenizer_base.py: every default of the speech-tokenizer trainer."""
    here = os.path.dirname(os.path.abspath(__file__))
    return config_lib.load_config_module(os.path.join(here, "tokenizer_base.py"))
