r"""The text-to-token model (glm4voice.md §7.2, §12 #12), tiny: text ids -> speech token ids.

A GLM decoder trained with the canonical LM trainer on ``tts`` records (prompts.py: loss only on
the speech tokens and <|end_of_audio|>), built from a speech corpus by
``glmvoice_jax/corpora/speech_records.py --kind tts``. Sampled by
glmvoice_jax/inference/sampling.py to synthesise
the speech spans of interleaved documents (glmvoice_jax/corpora/interleave_records.py).

Command:
    python -m data_pipelines.speech_records --kind tts --tokens TOK.jsonl \
        --transcripts MANIFEST.jsonl --tokenizer bytes --layout demo --out DATA/tts
    glmvoice-train --config configs/text_to_token_tiny.py:data=DATA/tts --workdir runs/t2t
    python -m data_pipelines.interleave_records --checkpoint runs/t2t --tokenizer bytes ...
Hardware: 2 CPU cores. Expected: the ``tiny`` preset (4 layers, d 128) in the ``demo`` layout.
``:size=base`` is the project's ~0.6B starting point for the GLM-4-Voice layout (24 layers,
d 1024, vocab 168,960; ≈ 346M embedding/head + 265M block parameters), sized for accelerators.
"""

import ml_collections as mlc

from glmvoice_jax import config_lib


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(arg, data="{workdir}/tts", steps=300, size="tiny")
    c = mlc.ConfigDict()
    c.trainer = "lm"
    c.seed = 0
    c.total_steps = arg.steps
    c.log_every_steps = 10
    c.init_from = ""
    if arg.size == "tiny":
        c.model = config_lib.model_section("tiny", scan_layers=True, remat_policy="none")
        c.tokens = dict(layout="demo")
        seq_len, batch, lr = 256, 16, 3e-3
    elif arg.size == "base":
        c.model = config_lib.model_section(
            "glm4_voice_9b",
            num_layers=24,
            embed_dim=1024,
            num_heads=16,
            num_kv_heads=2,
            head_dim=64,
            mlp_dim=2816,
            dtype="bfloat16",
            remat_policy="full",
        )
        c.tokens = dict(layout="glm4_voice")
        seq_len, batch, lr = 1024, 256, 6e-4
    else:
        raise ValueError(f"size must be 'tiny' or 'base', got {arg.size!r}")
    c.input = dict(
        sources={"tts": dict(paths=f"{arg.data}/*.array_record", weight=1.0)},
        seq_len=seq_len,
        global_batch_size=batch,
        num_workers=0,
        prefetch_buffer_size=16,
        # True: resume although the sources' shards changed (the order changes from there).
        allow_shard_change=False,
    )
    c.optim = dict(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
    )
    c.schedule = dict(decay="cosine", warmup_steps=30, peak_lr=lr, end_lr=lr / 10)
    c.loss = dict(chunk_size=min(seq_len, 256))
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=100, keep=2, async_save=False)
    c.metrics = dict(peak_flops_per_device=1.5e11, on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c
