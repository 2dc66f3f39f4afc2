r"""Stage-1 pre-training on the four-kind mixture of Table 2 (glm4voice.md §7.1, §12 #17).

The corpus is what the data_pipelines jobs write under DATA_ROOT (thousands of shards per kind,
local or gs://; docs/data_plan.md):

  interleaved/   interleave_records.py     speech_only/  speech_records.py --kind speech
  asr/ tts/      speech_records.py --kind asr / tts (one "asr_tts" source)    text/  text_records.py

Grain mixes by *document*, so the weights are the Table 2 token shares divided by the mean
document length of each kind, normalised (``input.mean_doc_tokens``: estimates; replace them with
the values glmvoice-data-stats measures, or take its ``suggested weights``). ``input.token_shares``
holds the targets that glmvoice-data-stats compares against.

Command:
    glmvoice-data-stats --config configs/pretrain_mixture.py:data_root=DIR --num_batches 20
    glmvoice-train --config configs/pretrain_mixture.py:data_root=DIR,variant=tiny,layout=demo \
        --workdir runs/mix
Hardware: any; ``variant=glm4_voice_9b,layout=glm4_voice,seq_len=8192,batch=1024`` is the 9B
recipe's data section (configs/glm4_voice_9b_pretrain.py holds the rest of that run).
"""

import ml_collections as mlc

from glmvoice_jax import config_lib

# Table 2 token shares (glm4voice.md §7.1).
TOKEN_SHARES = {"interleaved": 0.626, "speech_only": 0.062, "asr_tts": 0.028, "text": 0.284}
# Estimated mean tokens per document at GLM-4-Voice scale: FineWeb-Edu-like documents of ~1,000
# text tokens with η = 0.3 at ~3.8 speech tokens per text token (455B / 120B, Table 2) ≈ 1,850;
# speech-only segments of ~30 s at 12.5 Hz ≈ 380; ASR/TTS utterances of ~12 s + transcript ≈ 190;
# text documents ≈ 1,000.
MEAN_DOC_TOKENS = {"interleaved": 1850.0, "speech_only": 380.0, "asr_tts": 190.0, "text": 1000.0}


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    arg = config_lib.parse_arg(
        arg,
        data_root="{workdir}/corpus",
        variant="tiny",
        layout="demo",
        seq_len=1024,
        batch=32,
        steps=1000,
    )
    c = mlc.ConfigDict()
    c.trainer = "lm"
    c.seed = 0
    c.total_steps = arg.steps
    c.log_every_steps = 10
    c.init_from = ""
    c.model = config_lib.model_section(arg.variant, remat_policy="none")
    c.tokens = dict(layout=arg.layout)
    root = arg.data_root
    paths = {
        "interleaved": [f"{root}/interleaved/*.array_record"],
        "speech_only": [f"{root}/speech_only/*.array_record"],
        "asr_tts": [f"{root}/asr/*.array_record", f"{root}/tts/*.array_record"],
        "text": [f"{root}/text/*.array_record"],
    }
    raw = {k: TOKEN_SHARES[k] / MEAN_DOC_TOKENS[k] for k in TOKEN_SHARES}
    c.input = dict(
        sources={k: dict(paths=paths[k], weight=raw[k] / sum(raw.values())) for k in paths},
        token_shares=dict(TOKEN_SHARES),
        mean_doc_tokens=dict(MEAN_DOC_TOKENS),
        seq_len=arg.seq_len,
        global_batch_size=arg.batch,
        num_workers=0,
        prefetch_buffer_size=16,
        # True: resume although the sources' shards changed (the order changes from there).
        allow_shard_change=False,
        # G > 1: row block g of the global batch reads only shard group g (shards g, g + G, ...
        # of every source), so with P hosts dividing G each host opens 1/P of the files; the
        # order stays the same for any host count (docs/elastic_resume.md). 0 = all shards.
        shard_groups=0,
    )
    c.optim = dict(
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, grad_accum_steps=1
    )
    c.schedule = dict(decay="linear", warmup_steps=100, peak_lr=3e-3, end_lr=3e-4)
    c.loss = dict(chunk_size=min(arg.seq_len, 1024))
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.axis_rules = "fsdp"
    c.ckpt = dict(every_steps=500, keep=2, async_save=True)
    c.metrics = dict(peak_flops_per_device=1.5e11, on_nonfinite="raise", console=True)
    c.debug = dict(sigkill_at_step=-1)
    return c
