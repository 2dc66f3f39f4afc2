r"""The speech tokenizer's whole config: what configs/tokenizer_{50hz,25hz,12hz,6hz}.py share.

Each of the four bitrate configs loads this file and calls ``base()`` with what differs per frame
rate (the pooling kernel, the codebook size, remat); every default of the speech-tokenizer trainer
is here, in one place. Loaded directly (``--config configs/tokenizer_base.py[:tiny]``) it is the
12.5 Hz tokenizer, the same as configs/tokenizer_12hz.py.
"""

import os
from collections.abc import Mapping

import ml_collections as mlc

from glmvoice_jax import config_lib

# ``:tiny`` dims: the whole ASR model small enough to train on 2 CPU cores in minutes. Restarts
# every 25 EMA steps: a dead code is one used < 0.99**interval times per step, and the reference's
# 100-step interval (0.37 uses/step) assumes ~1.5M frames per step; a 16-utterance CPU batch has
# ~560 frames, so codes drift away between rare restarts and the codebook collapses.
# conv_init_std 0.3 (the rest keeps Whisper's 0.02) because the model starts from scratch: at the
# quantizer, the variance of frames across positions (the sinusoid table) vs across utterances at
# one position (the audio) is 26 : 0.02 with 0.02 everywhere, 827 : 1917 with conv_init_std 0.3
# (espeak batch). With 0.02 the nearest code encodes the position (60% of ids equal at equal
# positions across different utterances after 750 steps; 8% with a larger init). Initialised
# from whisper-large-v3, the trained stem dominates and this does not arise.
# vq_loss_scale 1 (commitment 0.25, the reference code's default) instead of the project's 40: a
# commitment weight of 10 holds a from-scratch encoder at its initial, position-coding codes.
TINY_MODEL = dict(
    embed_dim=128, num_heads=4, mlp_dim=512, num_layers=4, pooling_position=2,
    quantize_position=2, vocab_size=320, num_decoder_layers=2, num_decoder_heads=4,
    decoder_mlp_dim=512, max_target_positions=96, restart_interval=25, conv_init_std=0.3,
    vq_loss_scale=1.0,
)  # fmt: skip


def base(variant: str, *, tiny: bool, steps: int, model: Mapping) -> mlc.ConfigDict:
    """Every field of a speech-tokenizer config; ``model`` = model.* overrides of the preset.

    Full size follows glm4voice.md §2.9 and §12 #1-8: init from whisper-large-v3, its tokenizer,
    4096 utterances per step, AdamW (0.9, 0.999, 1e-8, wd 0.01), 1% warm-up to 1e-5, linear
    decay to 0. ``tiny`` trains from scratch on the espeak corpus with a sentencepiece vocabulary.
    """
    c = mlc.ConfigDict()
    c.trainer = "speech_tokenizer"
    c.seed = 0
    c.total_steps = steps
    c.log_every_steps = 25 if tiny else 50
    # HF whisper-large-v3 directory (stock Whisper: every shared weight is copied), a released
    # tokenizer directory, or an Orbax checkpoint of this trainer. Empty = from scratch.
    c.init_from = ""
    c.model = config_lib.tokenizer_model_section(
        variant, **dict(TINY_MODEL if tiny else {}, **model)
    )
    c.text = dict(
        tokenizer="sentencepiece" if tiny else "whisper",
        vocab_size=TINY_MODEL["vocab_size"],  # sentencepiece only
        normalize=tiny,  # lower case, letters/digits/apostrophes (asr_scoring.normalize_text)
        whisper_dir="",  # tokenizer files of the Whisper checkpoint (default: init_from)
    )
    c.input = dict(
        # The espeak-ng demo corpus, synthesised on first use
        # (glmvoice_jax/corpora/espeak_corpus.py).
        espeak_corpus_dir="{workdir}/espeak" if tiny else "",
        # "grammar_6k": 6000 sentences over a 108-word grammar, one voice/speed/pitch each;
        # held-out (every 10th) sentences are unseen combinations, and the first 64 (the evals)
        # are those of "grammar" (its 1200 sentences, which the tiny model overfits by step
        # 2500). "natural": 255 hand-written sentences (x3 voices), which a CPU-sized model
        # memorises rather than generalises from.
        espeak_sentences="grammar_6k",
        espeak_variants_per_sentence=1,
        espeak_max_sentences=0,  # 0 = all sentences
        train_manifest="" if tiny else "{workdir}/asr/train.jsonl",  # {"id","audio","text"}
        heldout_manifest="" if tiny else "{workdir}/asr/heldout.jsonl",
        global_batch_size=16 if tiny else 4096,  # utterances (<= 30 s) per step, §12 #8
        max_audio_secs=8.0 if tiny else 30.0,
        bucket_secs=1.0 if tiny else 5.0,  # audio padded to multiples: one compile per bucket
        bucket_window=8,  # batches sorted by length together
        max_text_tokens=80 if tiny else 440,  # decoder positions (prefix + text)
        num_threads=2 if tiny else 16,
        prefetch_buffer_size=4,
    )
    c.vq = dict(
        codebook_init="data",  # "data" (§12 #3), "random", or a .npy of shape [C, D]
        init_batches=4,
        usage_window_steps=100,  # codebook_usage = fraction of codes used in these steps
    )
    # SpecAugment on the log-mel inside the jitted step (speech_input.SpecAugment; Park et al.
    # 2019), off by default. Full size: off, as the release (apply_spec_augment false, §2.1).
    # Tiny: also off. With the 6k-sentence corpus the 2500-step model underfits rather than
    # overfits, and 2 frequency (<= 27 bins) + 2 time (<= 20 frames, <= 10%) masks slowed it:
    # held-out CER 66.7% vs 60.0% without, at step 1000 (configs/tokenizer_12hz.py). To try it:
    # --config.augment.freq_masks=2 --config.augment.time_masks=2.
    c.augment = dict(freq_masks=0, freq_width=27, time_masks=0, time_width=20, time_frac=0.1)
    # Label smoothing of the ASR cross-entropy (Szegedy et al. 2016, arXiv:1512.00567, §7; the
    # logged asr_loss is the plain one). Tiny: 0.1; held-out CER 24.2% vs 43.0% with 0 at step
    # 2500 on the 6k corpus. Full size: 0 (the paper states none).
    c.loss = dict(label_smoothing=0.1 if tiny else 0.0)
    c.optim = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip_norm=1.0)
    c.schedule = (
        dict(decay="cosine", warmup_steps=200, peak_lr=1e-3, end_lr=1e-4)
        if tiny
        else dict(decay="linear", warmup_steps=max(1, steps // 100), peak_lr=1e-5, end_lr=0.0)
    )
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=250 if tiny else 1000, keep=3, async_save=True)
    c.evals = dict(
        every_steps=250 if tiny else 2000,
        batch_size=16 if tiny else 256,
        max_new_tokens=72 if tiny else 440,
        max_utterances=64 if tiny else 1000,
        num_print=3,
    )
    c.metrics = dict(on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizer_12hz.py")
    return config_lib.load_config_module(here).get_config(arg)
