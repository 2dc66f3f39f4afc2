r"""The speech decoder's flow, trained by conditional flow matching at tiny scale (issue 19).

The ``tiny`` decoder preset (decoder.md §17.2, 80 mel bins) with the tokenizer's vocabulary and
token rate; the release's loss (§15.1) and the CosyVoice optimiser (Adam, warm-up, grad-clip 5).

Command (CPU; tokens of the make-demo tokenizer, e.g. 256 codes at 12.5 Hz):
    glmvoice-tokenize --checkpoint $WORKDIR/tokenizer --input $WORKDIR/audio.jsonl \
        --output $WORKDIR/tokens.jsonl
    glmvoice-train --config configs/decoder_tiny.py:vocab=256,rate=12.5 --workdir runs/flow \
        --config.input.manifest=$WORKDIR/audio.jsonl --config.input.tokens=$WORKDIR/tokens.jsonl
Args: ``vocab`` (the tokenizer's codebook size), ``rate`` (its token rate in Hz), ``steps``.
Expected: the held-out CFM loss (fixed key) and mel L1 fall from their step-0 values (metrics.jsonl
step 0); the tiny-scale vocoder is Griffin-Lim (models/speech_decoder/mel.py), chosen by
``vocoder``. Measured on the make-demo corpus (bench/decoder_reconstruction.py, 600 steps, 11 min
on 2 loaded cores): held-out CFM 38.7 -> 3.26, mel L1 5.42 -> 1.40 (docs/decoder_training.md).
The trained decoder (flow + vocoder) is WORKDIR/decoder: glmvoice-decode --checkpoint it.
"""

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, vocab=256, rate=12.5, steps=2000)
    c = mlc.ConfigDict()
    c.trainer = "speech_decoder"
    c.seed = 0
    c.total_steps = arg.steps
    c.log_every_steps = 25
    # A decoder checkpoint (glmvoice-import of a release dir, a WORKDIR/decoder or checkpoints of
    # this trainer) or a release dir: the flow starts from its flow. Empty = from scratch.
    c.init_from = ""
    c.init_new_tokenizer = False  # True: init_from of another vocab / token rate, fresh embedding
    # FlowConfig overrides of the preset (any FlowConfig field may be added).
    c.model = dict(variant="tiny", vocab_size=arg.vocab, input_frame_rate=arg.rate)
    # mel -> wav: "griffin_lim" (mel.py's inversion, no parameters: tiny CPU runs) or "hift" (the
    # HiFT of vocoder_from, default init_from: an imported release decoder). The trained decoder
    # (flow + vocoder) is written to WORKDIR/decoder for glmvoice-decode / glmvoice-chat.
    c.vocoder = "griffin_lim"
    c.vocoder_from = ""
    c.input = dict(
        manifest="",  # {"id", "audio"} jsonl
        tokens="",  # glmvoice-tokenize output {"id", "tokens"} for the same ids
        max_tokens=64,  # 5.1 s at 12.5 Hz; longer utterances are cut (batches padded to it)
        global_batch_size=8,
        heldout_every=10,  # every 10th utterance is held out
        truncate_seconds=0.0,  # > 0: rows cut to their first n·b s (configs/decoder_new_voice.py)
    )
    # CosyVoice recipe (decoder.md §15.1): Adam 1e-3, warm-up 2500, clip 5; warm-up shortened
    # to the tiny run's length.
    c.optim = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=5.0)
    c.schedule = dict(decay="constant", warmup_steps=100, peak_lr=1e-3, end_lr=1e-3)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=250, keep=3, async_save=True)
    c.evals = dict(every_steps=250, batch_size=8, max_utterances=32)
    c.metrics = dict(on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c
