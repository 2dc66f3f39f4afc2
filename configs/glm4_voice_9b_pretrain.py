r"""GLM-4-Voice-9B stage-1 pre-training: 1T interleaved speech/text tokens at seq 8192.

Command (every host of a TPU v5p-512 pod slice = 256 chips, see launch/):
    glmvoice-train --config configs/glm4_voice_9b_pretrain.py \
        --workdir gs://BUCKET/glm4voice9b/run1 \
        --config.init_from=gs://BUCKET/glm-4-9b-base-imported
Hardware: TPU v5p-512 (256 chips, 95 GiB HBM each), mesh fsdp 256.
Pre-flight without the pod: `glmvoice-train --config configs/glm4_voice_9b_pretrain.py
--workdir /tmp/x --dry_run` prints 9,542,557,696 parameters and ~447 MB of params + AdamW state
per device. Expected throughput: fill in after the first real run.

Recipe: glm4voice.md §7.4 and the project defaults of §12 #16-17: AdamW (0.9, 0.95), weight decay
0.1 off norms/biases, clip 1.0, 1,000 warm-up steps then linear 6e-5 -> 6e-6; global batch
1024 x 8192 = 8,388,608 tokens/step, 1e12 / 8,388,608 = 119,210 steps; fp32 params, bf16 compute.
"""

import os

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, data_root="gs://BUCKET/glm4voice-corpus")
    c = mlc.ConfigDict()
    c.trainer = "lm"
    c.seed = 0
    c.total_steps = 119_210
    c.log_every_steps = 10
    c.init_from = ""
    c.model = config_lib.model_section(
        "glm4_voice_9b",
        param_dtype="float32",
        dtype="bfloat16",
        scan_layers=True,
        remat_policy="full",
        attention_impl="chunked",
        attention_chunk=1024,
    )
    c.tokens = dict(layout="glm4_voice")
    # The four-kind mixture of configs/pretrain_mixture.py (Table 2 token shares turned into
    # per-document weights with the estimated mean document lengths; recalibrate them with
    # glmvoice-data-stats on the real corpus), at the 9B run's length and batch.
    mixture = config_lib.load_config_file(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain_mixture.py")
        + f":data_root={arg.data_root},seq_len=8192,batch=1024"
    )
    c.input = mixture.input
    c.input.num_workers = 8
    c.input.prefetch_buffer_size = 64
    c.optim = dict(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
    )
    c.schedule = dict(decay="linear", warmup_steps=1_000, peak_lr=6e-5, end_lr=6e-6)
    c.loss = dict(chunk_size=1024)  # [B, 1024, 168960] f32 logits live at a time, not [B, 8192, .]
    c.mesh = dict(data=1, fsdp=256, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=1_000, keep=3, async_save=True)
    c.metrics = dict(peak_flops_per_device=459e12, on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c
