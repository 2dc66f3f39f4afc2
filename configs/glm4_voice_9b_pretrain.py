r"""GLM-4-Voice-9B stage-1 pre-training: 1T interleaved speech/text tokens at seq 8192.

Slices: the default ``slice=v5p-512`` (256 chips, fsdp 256, no accumulation) is what this file
describes as shipped; ``:slice=v5p-128``, ``:slice=v6e-256`` and ``:slice=2xv6e-256`` run the same
recipe (same global batch, data order and schedule) on the other slices, with the mesh and the
gradient accumulation that fit there. Compiled with ``glmvoice-aot`` on a CPU machine, no
overrides (docs/aot.md, "9B step as shipped"), GiB per chip:

    slice        mesh                accum  total / HBM
    v5p-512      fsdp 256            1      30.26 / 95.74
    v5p-128      fsdp 64             2      64.91 / 95.74
    v6e-256      fsdp 256            2      17.15 / 31.25
    2xv6e-256    data 2 x fsdp 256   1      19.10 / 31.25

Pre-flight (the README's command; exit 1 if the step does not fit):
    glmvoice-aot --config configs/glm4_voice_9b_pretrain.py --topology v5p-512
Command (every host of the slice; launch/ starts it there), from the import of GLM-4-9B with
``--add_speech_tokens 16384`` (its layout is then this config's ``glm4_voice``):
    glmvoice-train --config configs/glm4_voice_9b_pretrain.py \
        --workdir gs://BUCKET/glm4voice9b/run1 \
        --config.init_from=gs://BUCKET/glm-4-9b-speech
The corpora: ``:data_root=gs://BUCKET/glm4voice-corpus`` (the four record kinds of
configs/pretrain_mixture.py below it). 9,542,557,696 parameters. Expected throughput: fill in
after the first real run (45% MFU implies 9.7 s per step on v5p-512, docs/aot.md).

Recipe: glm4voice.md §7.4 and the project defaults of §12 #16-17: AdamW (0.9, 0.95), weight decay
0.1 off norms/biases, clip 1.0, 1,000 warm-up steps then linear 6e-5 -> 6e-6; global batch
1024 x 8192 = 8,388,608 tokens/step, 1e12 / 8,388,608 = 119,210 steps; fp32 params, bf16 compute.
"""

import os

import ml_collections as mlc

from glmvoice_jax import config_lib

# slice -> (mesh, grad_accum_steps): the largest microbatch that fits each slice's HBM with full
# remat (docs/aot.md). The global batch stays 1024, so every slice trains the same recipe, and a
# run resumes on another slice with the same batches (docs/elastic_resume.md).
SLICES = {
    "v5p-512": (dict(data=1, fsdp=256, tensor=1), 1),
    "v5p-128": (dict(data=1, fsdp=64, tensor=1), 2),
    "v6e-256": (dict(data=1, fsdp=256, tensor=1), 2),
    "2xv6e-256": (dict(data=2, fsdp=256, tensor=1), 1),
}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, slice="v5p-512", data_root="gs://BUCKET/glm4voice-corpus")
    if arg.slice not in SLICES:
        raise ValueError(
            f"slice={arg.slice!r} is not one this config was compiled for; use one of "
            f"{sorted(SLICES)}, or override mesh.* and optim.grad_accum_steps and check the fit "
            "with glmvoice-aot"
        )
    mesh, accum = SLICES[arg.slice]
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
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=accum
    )
    c.schedule = dict(decay="linear", warmup_steps=1_000, peak_lr=6e-5, end_lr=6e-6)
    c.loss = dict(chunk_size=1024)  # [B, 1024, 168960] f32 logits live at a time, not [B, 8192, .]
    c.mesh = dict(mesh)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=1_000, keep=3, async_save=True)
    c.metrics = dict(peak_flops_per_device=459e12, on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c
