r"""Stage-2 "streaming thoughts" SFT of the tiny `make demo` model, on a laptop CPU.

Command (after `make demo`, which leaves the pre-trained tiny GLM in runs/demo/checkpoints):
    python -m data_pipelines.dialogue_records --dialogues 'DIALOGUES/*.jsonl' \
        --speech_tokens 'TOK/*.jsonl' --tokenizer bytes --layout demo_chat \
        --out runs/sft/sft --num_shards 1
    glmvoice-train --config configs/sft_tiny.py --workdir runs/sft
Hardware: 2 CPU cores (1 JAX device). ``:init_from=`` trains from scratch instead (tests).

The recipe of configs/glm4_voice_9b_sft.py at tiny size: the two record copies mixed 20 : 4,
hidden dropout (``:dropout=``, default 0.5), weight decay 0.1, clip 1.0, linear LR decay by 10x
(1e-3 -> 1e-4 here, not the 9B's 1e-5: the tiny model was pre-trained at 3e-3). Measured on a
fresh clone's demo model (docs/sft.md): at 3e-4 the 300 steps left 0 % of held-out replies
well-formed; at 1e-3, 100 % with dropout 0.5 and with 0.1.
Layout ``demo_chat`` = the demo layout plus the chat role tokens, so a ``demo`` checkpoint
fine-tunes on it and glmvoice-chat uses the chat template with it.
"""

import ml_collections as mlc

from glmvoice_jax import config_lib

EPOCHS = {"speech_output": 20, "text_output": 4}  # [P §4.2.2]


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(
        arg, steps=200, init_from="runs/demo/checkpoints", dropout=0.5, data_root="{workdir}/sft"
    )
    c = mlc.ConfigDict()
    c.trainer = "lm"
    c.seed = 0
    c.total_steps = arg.steps
    c.log_every_steps = 10
    c.init_from = arg.init_from
    c.model = config_lib.model_section(
        "tiny", scan_layers=True, remat_policy="none", dropout=arg.dropout
    )
    c.tokens = dict(layout="demo_chat")
    total = sum(EPOCHS.values())
    c.input = dict(
        sources={
            name: dict(paths=f"{arg.data_root}/{name}/*.array_record", weight=epochs / total)
            for name, epochs in EPOCHS.items()
        },
        seq_len=512,
        global_batch_size=8,  # 8 x 512 = 4,096 tokens per step
        num_workers=0,
        prefetch_buffer_size=16,
        allow_shard_change=False,
    )
    c.optim = dict(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
    )
    c.schedule = dict(decay="linear", warmup_steps=10, peak_lr=1e-3, end_lr=1e-4)
    c.loss = dict(chunk_size=256)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=100, keep=2, async_save=True)
    c.metrics = dict(peak_flops_per_device=1.5e11, on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c
