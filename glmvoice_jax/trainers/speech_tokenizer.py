"""Speech-tokenizer trainer: Whisper-VQ as an ASR model, a fork of the canonical trainers/lm.py.

GLM-4-Voice trains its tokenizer as a whole ASR model (glm4voice.md §2.9): causal conv stem,
block-causal encoder, pooling + EMA vector quantizer in the middle, the rest of the encoder, and
the Whisper decoder; loss = ASR cross-entropy + commitment (§2.7). Every step, inside the jitted
step and over the *global* batch (plain jit over data-sharded global arrays, so XLA reduces the
per-code counts and sums across the data-parallel shards), the EMA codebook is updated (§2.5) and,
every ``restart_interval`` EMA steps, dead codes are restarted from random valid frames with one
PRNG key folded with the step (§2.6, §12 #5): the result does not depend on the device count.

Train state, as in lm.py: ``params`` is the whole model state (``nnx.to_pure_dict``: Params, the
frozen position table and the VQStats codebook / EMA buffers), ``train`` = {opt, step, rng,
last_used}. Only Param leaves are optimised; the VQStats leaves come out of the forward pass.
``last_used[c]`` is the last step that used code c, for ``codebook_usage`` (the fraction of codes
used in the last ``vq.usage_window_steps`` steps).

Regularisers, both configurable and used by the ``:tiny`` configs only where they helped:
label smoothing of the ASR cross-entropy (``loss.label_smoothing``) and SpecAugment masking of
the log-mel inside the jitted step (``augment``; speech_input.SpecAugment, key folded from the
step's key). ``cpu_minutes`` in the metrics is the process CPU time (all threads) since start-up.

Text side: a sentencepiece model trained on the training transcripts (from-scratch configs), or
the Whisper tokenizer of the imported checkpoint (``text.tokenizer = "whisper"``). Its files go to
WORKDIR/checkpoints/tokenizer and are recorded in the checkpoint meta, with the WhisperVQConfig and
the bitrate.

Init from whisper-large-v3 (``init_from`` = a HF WhisperForConditionalGeneration directory): every
shared weight is copied, ``embed_positions2`` = the first rows of ``embed_positions`` (§12 #4) and
the codebook is data-dependent: frames at the quantizer position sampled without replacement from
the first training batches (§12 #3; ``vq.codebook_init``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from glmvoice_jax import audio, checkpoint, config_lib, metrics, optim, progress, sharding
from glmvoice_jax.data import speech_input
from glmvoice_jax.evals.asr_metrics import error_rates, normalize_text
from glmvoice_jax.models import vq, whisper_asr
from glmvoice_jax.models.whisper_vq import WhisperVQ, WhisperVQConfig
from glmvoice_jax.trainers import loop
from glmvoice_jax.trainers import speech_tokenizer_setup as setup

TRAINER = "speech_tokenizer"


# The LM trainer's non-finite check and stop flag (one definition of each for both trainers).


def make_train_step(graphdef, tx, model_cfg: WhisperVQConfig, config: mlc.ConfigDict, mask):
    """The pure step: (params, train, batch) -> (params, train, metrics)."""
    lr_fn = optim.schedule(config.schedule, config.total_steps)
    window = config.vq.usage_window_steps
    skip_nonfinite = config.metrics.on_nonfinite == "skip"
    num_codes = model_cfg.codebook_size
    augment = speech_input.SpecAugment(**config.augment)
    smoothing = config.loss.label_smoothing

    def loss_fn(trainable, params, batch, mel, mel_mask, key):
        model = nnx.merge(graphdef, setup.merge(params, trainable))
        logits, enc = model(
            mel, mel_mask, batch["dec_in"], batch["dec_valid"], train=True, restart_key=key
        )
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["dec_target"])
        w = batch["dec_weight"]
        denom = jnp.maximum(jnp.sum(w), 1.0)
        asr = jnp.sum(xent * w) / denom  # logged: the plain cross-entropy
        if smoothing:  # CE against (1 - a) onehot + a / V: (1 - a) xent + a (lse - mean logit)
            logits32 = logits.astype(jnp.float32)
            uniform = jax.nn.logsumexp(logits32, axis=-1) - jnp.mean(logits32, axis=-1)
            xent = (1.0 - smoothing) * xent + smoothing * uniform
        loss = jnp.sum(xent * w) / denom + enc.aux["vq_loss"]
        stats = setup.subset(nnx.to_pure_dict(nnx.state(model)), mask, keep=False)
        return loss, (asr, stats, enc.ids, enc.token_mask, enc.aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(params, train, batch):
        mel, mel_mask = features(batch, model_cfg)
        key = jax.random.fold_in(jax.random.wrap_key_data(train["rng"]), train["step"])
        mel = augment(mel, mel_mask, jax.random.fold_in(key, 1))  # restarts use ``key`` itself
        trainable = setup.subset(params, mask, keep=True)
        (loss, (asr, stats, ids, tmask, aux)), grads = grad_fn(
            trainable, params, batch, mel, mel_mask, key
        )
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, train["opt"], trainable)
        new_params = setup.merge(stats, optax.apply_updates(trainable, updates))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            new_params, new_opt = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (new_params, new_opt),
                (params, train["opt"]),
            )
        step = train["step"] + 1
        counts = vq.code_counts(ids, tmask, num_codes)  # (C,) over the global batch
        last_used = jnp.where(counts > 0, step, train["last_used"])
        probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
        entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-30)), 0.0))
        new_train = {"opt": new_opt, "step": step, "rng": train["rng"], "last_used": last_used}
        out = {
            "loss": loss,
            "asr_loss": asr,
            "commit_loss": aux["vq_loss"],
            "grad_norm": grad_norm,
            "lr": lr_fn(train["step"]),
            "codebook_usage": jnp.mean((step - last_used) < window),
            "codebook_perplexity": jnp.exp(entropy),
            "num_active_codes": aux["num_active_codes"],
            "codes_restarted": aux["codes_restarted"],
            "audio_secs": jnp.sum(batch["wav_len"]) / audio.SAMPLE_RATE,
            "speech_tokens": jnp.sum(tmask),
            # Static shapes: a constant per compiled bucket (models/whisper_vq.py train_flops).
            "flops": jnp.float32(
                model_cfg.train_flops(mel.shape[0], mel.shape[1], batch["dec_in"].shape[1])
            ),
            "finite": finite,
        }
        return new_params, new_train, out

    return step_fn


def features(batch: dict, model_cfg: WhisperVQConfig) -> tuple[jax.Array, jax.Array]:
    """Log-mel [B, L, M] and frame mask [B, L] on device, as the tokenizer sees audio.

    As ``speech_tokenizer.tokenize_waveforms``: the waveform is zero-padded to a multiple of
    samples_per_token for the log-mel, and frame l is valid iff 160 l < the real length.
    """
    spt = model_cfg.samples_per_token
    wav, n = batch["wav"], batch["wav_len"]
    padded = jnp.minimum((n + spt - 1) // spt * spt, wav.shape[1])
    mel = audio.log_mel_jax(wav, padded, n_mels=model_cfg.num_mels)
    limit = (n + audio.HOP_LENGTH - 1) // audio.HOP_LENGTH
    return mel, jnp.arange(mel.shape[1])[None, :] < limit[:, None]


def make_eval_step(graphdef, model_cfg: WhisperVQConfig, text: setup.AsrText, max_new: int):
    """(params, batch) -> greedy tokens [B, max_new] and lengths [B], with the KV cache."""

    def eval_fn(params, batch):
        model = nnx.merge(graphdef, params)
        mel, mel_mask = features(batch, model_cfg)
        enc = model.encoder(mel, mel_mask)
        return whisper_asr.greedy_decode(
            model.decoder,
            enc.hidden,
            enc.mask,
            text.prefix,
            max_new_tokens=max_new,
            eos_id=text.eos_id,
        )

    return eval_fn


def dry_run(config: mlc.ConfigDict) -> dict:
    """Shapes only: parameter count and per-device bytes of params + AdamW state on the mesh."""
    model_cfg = config_lib.tokenizer_model_config(config)
    mesh_cfg = dict(config.mesh)
    num = (
        jax.device_count()
        if any(v == -1 for v in mesh_cfg.values())
        else int(np.prod(list(mesh_cfg.values())))
    )
    shape = dict(zip(sharding.MESH_AXES, sharding.resolve_mesh_shape(mesh_cfg, num)))
    with nnx.logical_axis_rules(sharding.rules(config.axis_rules)):
        abs_model = nnx.eval_shape(lambda: WhisperVQ(model_cfg, rngs=nnx.Rngs(0)))
        state = nnx.state(abs_model)
        specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
        trainable = nnx.to_pure_dict(nnx.state(abs_model, nnx.Param))
    abs_params = nnx.to_pure_dict(state)
    leaves = zip(
        jax.tree.leaves(abs_params),
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
    )
    param_bytes = sum(
        int(np.prod(sharding.shard_shape(x.shape, s, shape))) * x.dtype.itemsize for x, s in leaves
    )
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abs_params))
    n_trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable))
    out = {
        "parameters": n_params,
        "trainable_parameters": n_trainable,
        "bitrate_bps": model_cfg.bitrate_bps,
        "mesh": shape,
        "param_bytes_per_device": param_bytes,
        "opt_bytes_per_device": 2 * param_bytes,
    }
    print(setup.banner(config, model_cfg))
    print(f"parameters: {n_params:,} ({n_trainable:,} trained by the optimizer)")
    print(f"mesh: {shape}; per-device bytes: params {param_bytes / 2**20:,.1f} MiB + AdamW ~2x")
    return out


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The model, optimizer and train-state layout of ``train()``, created sharded on a mesh.

    Shared with glmvoice-aot (aot_steps.speech_tokenizer_step), which lowers the same step.
    """

    make_model: Callable[[], WhisperVQ]
    graphdef: Any
    abs_params: Any
    param_sh: Any
    mask: Any
    tx: optax.GradientTransformation
    init_train: Callable[[Any], dict]
    abs_train: Any
    train_sh: Any
    replicated: NamedSharding


def state_layout(config: mlc.ConfigDict, mesh) -> StateLayout:
    """Abstract params and train state with their shardings under ``config.axis_rules``."""
    model_cfg = config_lib.tokenizer_model_config(config)

    def make_model():
        return WhisperVQ(model_cfg, rngs=nnx.Rngs(config.seed))

    graphdef, abs_params, param_sh = sharding.param_shardings(make_model, mesh, config.axis_rules)
    mask = setup.param_mask(make_model, abs_params)
    tx = optim.make(
        config.optim,
        optim.schedule(config.schedule, config.total_steps),
        setup.subset(abs_params, mask, keep=True),
    )
    replicated = NamedSharding(mesh, PartitionSpec())

    def init_train(params):
        return {
            "opt": tx.init(setup.subset(params, mask, keep=True)),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(config.seed)),
            "last_used": jnp.full((model_cfg.codebook_size,), -(2**30), jnp.int32),
        }

    abs_train = jax.eval_shape(init_train, abs_params)
    train_sh = setup.train_shardings(abs_train, abs_params, param_sh, replicated)
    return StateLayout(
        make_model, graphdef, abs_params, param_sh, mask, tx, init_train, abs_train, train_sh,
        replicated,
    )  # fmt: skip


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until config.total_steps (resuming from WORKDIR/checkpoints); returns last metrics."""
    ####################################################################################
    # Validate, workdir
    ####################################################################################
    config_lib.validate_speech_tokenizer(config)
    loop.check_workdir(workdir)
    model_cfg = config_lib.tokenizer_model_config(config)
    is_main = jax.process_index() == 0
    if is_main:
        (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
        print(setup.banner(config, model_cfg), flush=True)

    ####################################################################################
    # Data: corpus, text tokenizer, utterances
    ####################################################################################
    ckpt_dir = str(epath.Path(workdir) / "checkpoints")
    manifests = setup.manifests(config, workdir)
    train_rows = speech_input.read_manifest(manifests["train"])
    text = setup.text_side(config, ckpt_dir, [r["text"] for r in train_rows])
    max_samples = int(config.input.max_audio_secs * audio.SAMPLE_RATE)
    max_ids = config.input.max_text_tokens + 1 - len(text.prefix) - 1
    train_utts, dropped = speech_input.prepare(
        train_rows, text.encode, max_samples=max_samples, max_ids=max_ids
    )
    heldout_utts, _ = speech_input.prepare(
        speech_input.read_manifest(manifests["heldout"])[: config.evals.max_utterances],
        text.encode,
        max_samples=max_samples,
        max_ids=max_ids,
    )
    if is_main:
        secs = sum(u.num_samples for u in train_utts) / audio.SAMPLE_RATE
        print(
            f"data: {len(train_utts)} training utterances ({secs / 60:.1f} min; dropped "
            f"{dropped}), {len(heldout_utts)} held-out; text: {text.describe()}",
            flush=True,
        )

    ####################################################################################
    # Mesh
    ####################################################################################
    mesh = sharding.make_mesh(config.mesh)
    preset = config.axis_rules
    setup.check_batch_sizes(config, sharding.data_parallel_size(mesh, preset))

    ####################################################################################
    # Model & optimizer, created sharded
    ####################################################################################
    layout = state_layout(config, mesh)
    make_model, graphdef, mask, tx = layout.make_model, layout.graphdef, layout.mask, layout.tx
    abs_params, param_sh = layout.abs_params, layout.param_sh
    init_train, abs_train, train_sh = layout.init_train, layout.abs_train, layout.train_sh
    replicated = layout.replicated

    ####################################################################################
    # Input pipeline
    ####################################################################################
    bucket = setup.bucket_samples(config, model_cfg)

    def new_iterator():
        return speech_input.make_iterator(
            train_utts,
            global_batch_size=config.input.global_batch_size,
            bucket_samples=bucket,
            prefix=text.prefix,
            eos_id=text.eos_id,
            max_text_tokens=config.input.max_text_tokens,
            seed=config.seed,
            bucket_window=config.input.bucket_window,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            num_threads=config.input.num_threads,
            prefetch_buffer_size=config.input.prefetch_buffer_size,
        )

    data_iter = new_iterator()
    batch_sh = {k: sharding.batch_sharding(mesh, preset, 1 if k == "wav_len" else 2)
                for k in speech_input.BATCH_KEYS}  # fmt: skip

    def to_global(local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(batch_sh[k], np.asarray(local[k]))
            for k in speech_input.BATCH_KEYS
        }

    ####################################################################################
    # Restore (resume) or initialise (fresh / init_from, data-dependent codebook)
    ####################################################################################
    ckpt = checkpoint.Checkpointer(
        ckpt_dir, keep=config.ckpt.keep, async_save=config.ckpt.async_save
    )
    meta = checkpoint.model_meta(
        model_cfg,
        None,
        tokenizer=text.meta,
        extra={
            "trainer": TRAINER,
            "bitrate_bps": model_cfg.bitrate_bps,
            "token_rate_hz": model_cfg.token_rate_hz,
            "text_prefix": list(text.prefix),
            "text_eos": text.eos_id,
            "text_normalize": bool(config.text.normalize),
            "config": config.to_dict(),
        },
    )
    with sharding.activate(mesh, preset):
        # The newest intact step (damaged ones are named and kept aside); None when fresh.
        resumed = ckpt.restore_latest(
            abstract_params=checkpoint.abstract_like(abs_params, param_sh),
            abstract_train=checkpoint.abstract_like(abs_train, train_sh),
            data_iter=data_iter,
            meta=meta,
        )
        if resumed is not None:
            start_step, params, train_state, _, _ = resumed
            print(f"resumed from step {start_step} ({ckpt.directory})", flush=True)
        else:
            start_step = 0
            params = jax.jit(
                lambda: nnx.to_pure_dict(nnx.state(make_model())), out_shardings=param_sh
            )()
            fresh_codebook = True
            if config.init_from:
                params, fresh_codebook = setup.init_from(
                    config.init_from, model_cfg, params, param_sh
                )
                print(f"initialised weights from {config.init_from}", flush=True)
            if fresh_codebook and config.vq.codebook_init != "random":
                frames = setup.codebook_frames(
                    config, graphdef, params, new_iterator(), to_global, features
                )
                params = setup.set_codebook(params, frames, param_sh)
                print(f"codebook initialised from {config.vq.codebook_init}", flush=True)
            train_state = jax.jit(init_train, out_shardings=train_sh)(params)

    ####################################################################################
    # Update step
    ####################################################################################
    step_fn = make_train_step(graphdef, tx, model_cfg, config, mask)
    # Jitted, not compiled ahead: audio comes in length buckets, one compile per bucket width.
    jit_step = jax.jit(
        step_fn,
        in_shardings=(param_sh, train_sh, batch_sh),
        out_shardings=(param_sh, train_sh, replicated),
        donate_argnums=(0, 1),
    )

    ####################################################################################
    # Evals: greedy decoding of the held-out set (WER / CER)
    ####################################################################################
    eval_step = jax.jit(
        make_eval_step(graphdef, model_cfg, text, config.evals.max_new_tokens),
        in_shardings=(param_sh, batch_sh),
        out_shardings=replicated,
    )
    eval_batches = list(
        speech_input.eval_batches(
            heldout_utts,
            batch_size=config.evals.batch_size,
            bucket_samples=bucket,
            prefix=text.prefix,
            eos_id=text.eos_id,
            max_text_tokens=config.input.max_text_tokens,
        )
    )

    def run_eval(params) -> dict[str, float]:
        refs, hyps = [], []
        local = config.evals.batch_size // jax.process_count()
        lo = jax.process_index() * local
        for utts, batch in eval_batches:
            rows = {k: v[lo : lo + local] for k, v in batch.items()}
            tokens, lengths = jax.device_get(eval_step(params, to_global(rows)))
            for r, u in enumerate(utts):
                refs.append(u.text)
                hyps.append(text.decode(tokens[r, : lengths[r]].tolist()))
        scores = error_rates(refs, hyps)
        if is_main:
            for ref, hyp in list(zip(refs, hyps))[: config.evals.num_print]:
                print(f"  ref: {normalize_text(ref)}\n  hyp: {normalize_text(hyp)}", flush=True)
        return {"eval_wer": scores["wer"], "eval_cer": scores["cer"]}

    ####################################################################################
    # Train loop
    ####################################################################################
    run = loop.Loop(
        config, mesh, ckpt, start_step, workdir=workdir, postfix=setup.console_line, desc="train"
    )
    peak = metrics.peak_flops(jax.devices()[0], config.metrics.get("peak_flops_per_device", 1.5e11))
    t_start = time.time()
    every_eval = config.evals.every_steps
    first = True
    with sharding.activate(mesh, preset):
        while run.running:
            with run.blocked("data"):
                batch = to_global(next(data_iter))
            run.before_step()
            # The first step compiles (its bucket); announced with its time like the LM's.
            with progress.timed(
                "compiling train step (first audio bucket)", enabled=first and is_main
            ):
                params, train_state, out = jit_step(params, train_state, batch)
                if first:
                    jax.block_until_ready(out["loss"])
            first = False
            run.stepped(out)
            step = run.step
            eval_now = every_eval > 0 and (step % every_eval == 0 or step == config.total_steps)
            if run.log_due(extra=eval_now):
                fetched, dt = run.fetch()
                # MFU only from timed steps (never from an interval of the compiling step alone).
                mesh_peak = peak * jax.device_count() if run.timed_steps else 0.0
                scalars = setup.summarize(fetched, dt, mesh_peak)
                scalars.update(run.breakdown)
                scalars["minutes"] = (time.time() - t_start) / 60
                scalars["cpu_minutes"] = time.process_time() / 60  # all threads, since start-up
                if eval_now:
                    t_eval = time.time()
                    scalars.update(run_eval(params))
                    run.exclude(time.time() - t_eval)  # eval time is not step time
                run.log(scalars, announce=eval_now)
            run.checkpoint(params=params, train=train_state, data_iter=data_iter, meta=meta)
    run.close()
    step, last = run.step, run.last
    if is_main:
        summary = {"workdir": workdir, "step": step, **last}
        (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return last
