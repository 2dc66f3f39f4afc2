r"""The embedded default: the `tiny` GLM on the demo corpus, on a laptop CPU.

Command (what `make demo` runs):
    python -m data_pipelines.demo_corpus --out runs/demo/corpus
    glmvoice-train --config configs/demo_tiny.py --workdir runs/demo
Hardware: 2 CPU cores (1 JAX device). Measured (fresh clone, shared 2-core EPYC, load ~4):
300 steps of 16 x 256 tokens in 4 min 07 s wall including corpus generation; loss 6.6 -> 0.72
(text 0.38, speech 1.05 nats/token) at step 300.

The same code path as configs/glm4_voice_9b_pretrain.py: only sizes differ.
"""

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, steps=300)
    c = mlc.ConfigDict()
    c.trainer = "lm"
    c.seed = 0
    c.total_steps = arg.steps
    c.log_every_steps = 10
    c.init_from = ""
    c.model = config_lib.model_section("tiny", scan_layers=True, remat_policy="none")
    c.tokens = dict(layout="demo")
    # Written by data_pipelines/demo_corpus.py; "{workdir}" is replaced by --workdir.
    c.input = dict(
        sources={
            "text": dict(paths="{workdir}/corpus/text/*.array_record", weight=0.3),
            "speech": dict(paths="{workdir}/corpus/speech/*.array_record", weight=0.2),
            "interleaved": dict(paths="{workdir}/corpus/interleaved/*.array_record", weight=0.5),
        },
        seq_len=256,
        global_batch_size=16,  # 16 x 256 = 4,096 tokens per step
        num_workers=0,
        prefetch_buffer_size=16,
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
    return c
