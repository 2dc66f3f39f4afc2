r"""GLM-4-Voice-9B stage 2: "streaming thoughts" SFT from the stage-1 checkpoint (glm4voice.md §8).

Command (every host of a TPU v5p-128 slice = 64 chips, see launch/):
    python -m data_pipelines.dialogue_records --dialogues 'gs://BUCKET/dialogues/*.jsonl' \
        --speech_tokens 'gs://BUCKET/dialogues/tok/*.jsonl' \
        --tokenizer glm-4/tokenizer.model --out gs://BUCKET/glm4voice-sft
    glmvoice-train --config configs/glm4_voice_9b_sft.py:data_root=gs://BUCKET/glm4voice-sft \
        --workdir gs://BUCKET/glm4voice9b/sft1 \
        --config.init_from=gs://BUCKET/glm4voice9b/run1/checkpoints
Pre-flight without the pod: `glmvoice-train --config configs/glm4_voice_9b_sft.py --workdir /tmp/x
--dry_run` prints 9,542,557,696 parameters on mesh fsdp 64 and ~1.7 GiB of fp32 params + AdamW
state per device; `glmvoice-aot --config configs/glm4_voice_9b_sft.py --topology v5p-128` (libtpu)
compiles the step at 18.2 of 95.7 GiB per chip, 4.85 s per step at 45% MFU (docs/sft.md).
Expected result: replies in the 13 : 26 format that glmvoice-chat plays; fill
in the loss and the held-out figures after the first real run.

Recipe [P §4.2.2]: AdamW (0.9, 0.95), LR 1e-5 -> 1e-6 (linear, after 100 warm-up steps), weight
decay 0.1 off norms/biases, clip 1.0, hidden dropout 0.5 (model.dropout; training only). Data:
the two copies of every dialogue that data_pipelines/dialogue_records.py writes, mixed by document
in the paper's epoch ratio, 20 epochs of speech output to 4 of text output: both sources hold one
record per dialogue, so per-document weights 20 : 4 are that ratio. Steps: D dialogues of T mean
tokens give 24 * D * T tokens; with the defaults (D = 1,000,000, T = 1,200; replace them with the
job's counts, glmvoice-data-stats measures T) and 128 x 8192 = 1,048,576 tokens per step that is
28.8e9 / 1,048,576 = 27,466 steps.
"""

import ml_collections as mlc

from glmvoice_jax import config_lib

EPOCHS = {"speech_output": 20, "text_output": 4}  # [P §4.2.2]


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(
        arg,
        data_root="gs://BUCKET/glm4voice-sft",
        dialogues=1_000_000,
        doc_tokens=1200,
        seq_len=8192,
        batch=128,
    )
    c = mlc.ConfigDict()
    c.trainer = "lm"
    c.seed = 0
    tokens = sum(EPOCHS.values()) * arg.dialogues * arg.doc_tokens
    c.total_steps = max(1, round(tokens / (arg.batch * arg.seq_len)))
    c.log_every_steps = 10
    # The stage-1 checkpoint (configs/glm4_voice_9b_pretrain.py); pass --config.init_from=CKPT.
    c.init_from = "gs://BUCKET/glm4voice9b/run1/checkpoints"
    c.model = config_lib.model_section(
        "glm4_voice_9b",
        param_dtype="float32",
        dtype="bfloat16",
        scan_layers=True,
        remat_policy="full",
        attention_impl="chunked",
        attention_chunk=1024,
        dropout=0.5,
    )
    c.tokens = dict(layout="glm4_voice")  # has the chat role tokens of the template
    total = sum(EPOCHS.values())
    c.input = dict(
        sources={
            name: dict(paths=f"{arg.data_root}/{name}/*.array_record", weight=epochs / total)
            for name, epochs in EPOCHS.items()
        },
        seq_len=arg.seq_len,
        global_batch_size=arg.batch,
        num_workers=8,
        prefetch_buffer_size=64,
        allow_shard_change=False,
    )
    c.optim = dict(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
    )
    c.schedule = dict(decay="linear", warmup_steps=100, peak_lr=1e-5, end_lr=1e-6)
    c.loss = dict(chunk_size=1024)
    c.mesh = dict(data=1, fsdp=64, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=1_000, keep=3, async_save=True)
    c.metrics = dict(peak_flops_per_device=459e12, on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c
