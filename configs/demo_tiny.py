r"""The embedded default: the `tiny` GLM on the demo corpus, on a laptop CPU.

Command (what `make demo` runs):
    python -m data_pipelines.demo_pipeline --workdir runs/demo
    glmvoice-train --config configs/demo_tiny.py --workdir runs/demo
The first command makes the four-kind corpus from espeak-ng speech and bundled text through the
real jobs (TFDS builders, a tiny speech tokenizer trained from scratch, glmvoice-tokenize, the
record jobs, the text-to-token model for the interleaved spans): glmvoice_jax/workflows/demo.py.
Hardware: 2 CPU cores (1 JAX device). Measured: see README ("make demo").

``:corpus=synthetic`` reads the three generated sources of glmvoice_jax/corpora/demo_corpus.py
instead
(text, speech, interleaved; seconds to make, used by the fast tests).

The same code path as configs/glm4_voice_9b_pretrain.py: only sizes differ.
"""

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, steps=300, corpus="speech")
    c = mlc.ConfigDict()
    c.trainer = "lm"
    c.seed = 0
    c.total_steps = arg.steps
    c.log_every_steps = 10
    c.init_from = ""
    c.model = config_lib.model_section("tiny", scan_layers=True, remat_policy="none")
    c.tokens = dict(layout="demo")
    # "{workdir}" is replaced by --workdir. Weights are per document.
    root = "{workdir}/corpus"
    if arg.corpus == "speech":  # glmvoice_jax/workflows/demo.py
        sources = {
            "text": dict(paths=f"{root}/text/*.array_record", weight=0.25),
            "speech_only": dict(paths=f"{root}/speech_only/*.array_record", weight=0.2),
            "asr_tts": dict(
                paths=[f"{root}/asr/*.array_record", f"{root}/tts/*.array_record"], weight=0.3
            ),
            "interleaved": dict(paths=f"{root}/interleaved/*.array_record", weight=0.25),
        }
    elif arg.corpus == "synthetic":  # glmvoice_jax/corpora/demo_corpus.py
        sources = {
            "text": dict(paths=f"{root}/text/*.array_record", weight=0.3),
            "speech": dict(paths=f"{root}/speech/*.array_record", weight=0.2),
            "interleaved": dict(paths=f"{root}/interleaved/*.array_record", weight=0.5),
        }
    else:
        raise ValueError(f"corpus must be 'speech' or 'synthetic', got {arg.corpus!r}")
    c.input = dict(
        sources=sources,
        seq_len=256,
        global_batch_size=16,  # 16 x 256 = 4,096 tokens per step
        num_workers=0,
        prefetch_buffer_size=16,
        # True: resume although the sources' shards changed (the order changes from there).
        allow_shard_change=False,
    )
    c.optim = dict(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
    )
    c.schedule = dict(decay="cosine", warmup_steps=30, peak_lr=3e-3, end_lr=3e-4)
    c.loss = dict(chunk_size=256)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=100, keep=3, async_save=True)
    # CPU has no vendor peak: ~150 GFLOP/s float32 per 2-core host (bench/train_step.py measures).
    c.metrics = dict(peak_flops_per_device=1.5e11, on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    # A jax.profiler trace of steps 20-22 in WORKDIR/profile (trainers/loop.py; start_step -1: off).
    c.profile = dict(start_step=20, num_steps=3)
    return c
