"""Speech-decoder trainer: the flow (token encoder + U-Net estimator) by conditional flow matching.

A fork of the canonical trainer for the decoder (house_style.md rule 6), on the shared step loop
(``loop.Loop``: stop vote, lagged NaN check, cadences, metrics.jsonl / TensorBoard, checkpoints).
The loss is the release's (decoder.md §15.1, ``flow_loss.cfm_loss``): cosine time, OT interpolant,
CFG dropout of (mu, spks, cond), a random prompt prefix, MSE over valid frames. Optimiser: the
CosyVoice recipe (Adam, warm-up, grad-clip 5) through ``optim.make`` with weight decay 0.

Data: speech tokens from ``glmvoice-tokenize`` (TOKENS.jsonl, ``{"id", "tokens"}``) joined by id
with an audio manifest (``{"id", "audio"}``); each utterance's §9 log-mel (``mel.log_mel`` at
22050 Hz) is computed once at start-up and kept in memory (a CPU-scale corpus). An utterance of N
tokens trains on T = frames_from_tokens(N, rate) frames (the length regulator's rule, so the frame
rate follows the tokenizer's); the tokenizer pads audio to whole tokens, so the mel is padded
with silence (log 1e-5) up to T. Batches are padded to ``input.max_tokens`` (one compile) and
drawn by a generator seeded with (seed, step), so a resumed run sees the batches of an
uninterrupted one (exact resume without an iterator state). Every ``input.heldout_every``-th
utterance is held out.

Evals: the held-out CFM loss at a fixed key (comparable across steps) and the held-out mel L1 of
the inference ODE (zero noise, no prompt) against the target mel.

Bad input: token ids outside the model's vocabulary, or token and mel lengths that disagree at the
corpus level (another frame rate), are refused naming the values; unreadable, silent or too-short
audio is skipped and counted (``errors.jsonl`` in the workdir).

Train state (as lm.py): ``params`` = the Flow's Params (``nnx.to_pure_dict``), ``train`` = {opt,
step, rng}. The checkpoint holds the flow only; its meta names the whole DecoderConfig (this flow,
the vocoder of ``config.vocoder``) with ``extra.params = "flow"`` and ``extra.vocoder_from``, so
``decoder_checkpoint.load_any`` (glmvoice-decode, glmvoice-chat) loads it as a decoder. At the end
the trainer also writes ``WORKDIR/decoder``: flow + vocoder in one self-contained checkpoint.

Vocoder (``config.vocoder``; docs/decoder_training.md): "griffin_lim" = the parameter-free
Griffin-Lim inversion of mel.py (tiny CPU runs: no release HiFT can be downloaded); "hift" = the
HiFT of a decoder checkpoint or release directory (``vocoder_from``, default ``init_from``),
unchanged by training (HiFT maps mel → wav whatever the tokenizer).

``init_from``: a decoder checkpoint (``glmvoice-import`` of a release directory,
``WORKDIR/decoder``, a trainer checkpoint) or a release directory; the flow starts from its flow.
Its vocabulary and token rate must be the config's (refused in one line naming both) unless
``init_new_tokenizer``: then the token embedding starts afresh for the config's vocabulary and
the rest comes from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
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

from glmvoice_jax import checkpoint, optim, sharding
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.models.speech_decoder import VARIANTS, DecoderConfig, FlowConfig
from glmvoice_jax.models.speech_decoder import mel as mel_lib
from glmvoice_jax.models.speech_decoder.flow import Flow
from glmvoice_jax.models.speech_decoder.flow_loss import cfm_loss, sample
from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens
from glmvoice_jax.trainers import loop, speech_tokenizer_setup

TRAINER = "speech_decoder"
MIN_TOKENS = 2  # shorter utterances are skipped (counted in errors.jsonl)
BATCH_KEYS = ("tokens", "token_valid", "mel", "frame_mask")
# Mel -> wav for listening and reconstruction scores: Griffin-Lim (mel.griffin_lim) at tiny scale,
# where no release HiFT can be downloaded; a HiFT checkpoint is the full-scale path (issue 19).
VOCODERS = ("griffin_lim", "hift")
EMBEDDING = "input_embedding/embedding"  # the flow's token table: (vocab_size, input_size)
# FlowConfig fields that do not change parameter shapes (an init_from may differ in them).
_NON_SHAPE_FIELDS = ("vocab_size", "input_frame_rate", "encoder_dropout", "inference_cfg_rate",
                     "training_cfg_rate", "sigma_min", "n_timesteps")  # fmt: skip


def flow_config(config: mlc.ConfigDict) -> FlowConfig:
    """The preset's FlowConfig with the config's ``model.*`` overrides (unknown names refused)."""
    variant = config.model.variant
    if variant not in VARIANTS:
        raise ValueError(
            f"model.variant {variant!r} is not a decoder preset; known {list(VARIANTS)}"
        )
    base = VARIANTS[variant].flow
    fields = {f.name for f in dataclasses.fields(FlowConfig)}
    overrides = {k: v for k, v in config.model.items() if k != "variant" and v is not None}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model fields {unknown}; FlowConfig fields: {sorted(fields)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(base, **overrides)


def validate(config: mlc.ConfigDict) -> FlowConfig:
    """Checks the config before anything is traced; returns the FlowConfig."""
    for key in ("total_steps", "log_every_steps"):
        if config[key] <= 0:
            raise ValueError(f"{key} must be > 0, got {config[key]}")
    if config.ckpt.every_steps <= 0:
        raise ValueError(f"ckpt.every_steps must be > 0, got {config.ckpt.every_steps}")
    if config.metrics.on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"metrics.on_nonfinite must be 'raise' or 'skip', got {config.metrics}")
    if config.input.max_tokens < MIN_TOKENS:
        raise ValueError(f"input.max_tokens must be >= {MIN_TOKENS}, got {config.input.max_tokens}")
    if config.input.truncate_seconds < 0:
        raise ValueError(
            f"input.truncate_seconds must be >= 0 (0: whole utterances; the new-voice recipe "
            f"uses 0.8), got {config.input.truncate_seconds}"
        )
    if config.vocoder not in VOCODERS:
        raise ValueError(f"vocoder {config.vocoder!r} is not one of {VOCODERS}")
    if config.vocoder == "hift" and not (config.vocoder_from or config.init_from):
        raise ValueError(
            "vocoder 'hift' needs a HiFT to reuse: set --config.vocoder_from (or init_from) to a "
            "decoder checkpoint (glmvoice-import of glm-4-voice-decoder) or a release directory, "
            "or use vocoder='griffin_lim'"
        )
    sharding.rules(config.axis_rules)  # raises with the known presets
    return flow_config(config)


@dataclasses.dataclass(frozen=True)
class Utterance:
    id: str
    tokens: np.ndarray  # (N,) int32, N <= max_tokens
    mel: np.ndarray  # (T, M) float32, T = frames_from_tokens(N)


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_corpus(config: mlc.ConfigDict, cfg: FlowConfig) -> tuple[list[Utterance], list[dict]]:
    """Utterances (tokens + target mel) and the skipped ones as {"id", "error"}.

    Raises:
      ValueError: for token ids outside [0, vocab_size), or when the token count and the audio
        length disagree over the corpus (tokens of another frame rate).
    """
    for key in ("manifest", "tokens"):
        if not config.input[key]:
            raise ValueError(
                f"input.{key} is empty; pass --config.input.{key}=PATH (tokens: glmvoice-tokenize "
                "output {id, tokens}; manifest: {id, audio} of the same utterances)"
            )
    audio = {str(r["id"]): r["audio"] for r in _read_jsonl(config.input.manifest)}
    utts, errors, ratios = [], [], []
    floor = np.float32(np.log(mel_lib.LOG_FLOOR))
    for row in _read_jsonl(config.input.tokens):
        uid = str(row["id"])
        tokens = np.asarray(row["tokens"], np.int32)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
            raise ValueError(
                f"utterance {uid!r} has token ids in [{tokens.min()}, {tokens.max()}] but the "
                f"decoder reads {cfg.vocab_size} ids (model.vocab_size); these tokens come from "
                "another tokenizer: set model.vocab_size to its codebook size"
            )
        if uid not in audio:
            errors.append({"id": uid, "error": "no audio in input.manifest"})
            continue
        if tokens.size < MIN_TOKENS:
            errors.append({"id": uid, "error": f"{tokens.size} tokens (< {MIN_TOKENS})"})
            continue
        try:
            wav = mel_lib.load_audio(audio[uid])
        except ValueError as e:
            errors.append({"id": uid, "error": str(e)})
            continue
        if not np.any(wav):
            errors.append({"id": uid, "error": "silent audio"})
            continue
        target = mel_lib.log_mel(wav)  # (T_audio, M)
        ratios.append(target.shape[0] / frames_from_tokens(tokens.size, cfg.input_frame_rate))
        tokens = tokens[: config.input.max_tokens]
        t = frames_from_tokens(tokens.size, cfg.input_frame_rate)
        target = target[:t]
        if target.shape[0] < t:  # the tokenizer's zero padding: silence
            pad = np.full((t - target.shape[0], target.shape[1]), floor, np.float32)
            target = np.concatenate([target, pad])
        utts.append(Utterance(uid, tokens, target))
    if ratios and not 0.8 <= float(np.median(ratios)) <= 1.2:
        raise ValueError(
            f"audio is {float(np.median(ratios)):.2f}x as long as {cfg.input_frame_rate} Hz tokens "
            "imply (median over the corpus): the tokens come at another frame rate; set "
            "model.input_frame_rate to the tokenizer's token rate"
        )
    return utts, errors


def make_batch(utts: list[Utterance], idx: np.ndarray, cfg: FlowConfig, max_tokens: int) -> dict:
    """Padded numpy batch: tokens (B, N), token_valid (B, N), mel (B, T, M), frame_mask (B, T)."""
    t_max = frames_from_tokens(max_tokens, cfg.input_frame_rate)
    b = len(idx)
    out = {
        "tokens": np.zeros((b, max_tokens), np.int32),
        "token_valid": np.zeros((b, max_tokens), bool),
        "mel": np.zeros((b, t_max, cfg.output_size), np.float32),
        "frame_mask": np.zeros((b, t_max), np.float32),
    }
    for r, i in enumerate(idx):
        u = utts[i]
        n, t = u.tokens.size, u.mel.shape[0]
        out["tokens"][r, :n], out["token_valid"][r, :n] = u.tokens, True
        out["mel"][r, :t], out["frame_mask"][r, :t] = u.mel, 1.0
    return out


def truncated(
    utts: list[Utterance], idx: np.ndarray, cfg: FlowConfig, block_tokens: int, key: list[int]
) -> list[Utterance]:
    """The rows ``idx``, each cut to its first n·b seconds (b = ``block_tokens`` tokens).

    The paper's new-voice recipe (glm4voice.md, decoder fine-tuning on one speaker with truncated
    samples, b = 0.8 s = 10 tokens at 12.5 Hz): n ~ U{1..⌊N/b⌋} per row, drawn from ``key``
    (seed, step) so a resumed run cuts alike; an utterance shorter than b stays whole.
    ``block_tokens`` 0 keeps every row whole.
    """
    rows = [utts[i] for i in idx]
    if block_tokens <= 0:
        return rows
    rng = np.random.default_rng(key)
    out = []
    for u in rows:
        blocks = max(1, u.tokens.size // block_tokens)
        n = min(u.tokens.size, block_tokens * int(rng.integers(1, blocks + 1)))
        t = frames_from_tokens(n, cfg.input_frame_rate)
        out.append(Utterance(u.id, u.tokens[:n], u.mel[:t]))
    return out


def batch_indices(step: int, num: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows of step ``step``: a function of (seed, step) only, so resume replays them."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(num, batch_size, replace=num < batch_size)


def make_train_step(graphdef, tx, config: mlc.ConfigDict):
    """The pure step: (params, train, batch) -> (params, train, metrics)."""
    lr_fn = optim.schedule(config.schedule, config.total_steps)
    skip_nonfinite = config.metrics.on_nonfinite == "skip"

    def loss_fn(params, batch, key):
        model = nnx.merge(graphdef, params)
        args = (batch["tokens"], batch["token_valid"], batch["mel"], batch["frame_mask"])
        return cfm_loss(model, *args, key)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step_fn(params, train, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(train["rng"]), train["step"])
        (loss, aux), grads = grad_fn(params, batch, key)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, train["opt"], params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            new_params, new_opt = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (new_params, new_opt),
                (params, train["opt"]),
            )
        new_train = {"opt": new_opt, "step": train["step"] + 1, "rng": train["rng"]}
        out = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr_fn(train["step"]),
            "frames": aux["frames"],
            "finite": finite,
        }
        return new_params, new_train, out

    return step_fn


def make_eval_step(graphdef, seed: int):
    """(params, batch, weight (B,)) -> weighted sums {squared CFM error, |mel error|, frames}.

    Rows of weight 0 pad the last batch (copies of real rows, so no row is empty).
    """
    key = jax.random.key(seed + 1)  # fixed: the held-out loss is comparable across steps

    def eval_fn(params, batch, weight):
        model = nnx.merge(graphdef, params)
        mask = batch["frame_mask"]
        args = (batch["tokens"], batch["token_valid"], batch["mel"], mask)
        _, aux = cfm_loss(model, *args, key, train=False)
        pred = sample(model, batch["tokens"], batch["token_valid"], mask)
        l1 = jnp.sum(jnp.abs(pred - batch["mel"]) * mask[:, :, None], axis=(1, 2))  # (B,)
        return {
            "sq_err": jnp.sum(aux["row_sq_err"] * weight),
            "l1": jnp.sum(l1 * weight),
            "frames": jnp.sum(jnp.sum(mask, axis=1) * weight),
        }

    return eval_fn


def _console(s: dict[str, float]) -> str:
    line = f"loss {s['loss']:.4f}  grad {s['grad_norm']:.2f}  {s['step_time']:.2f} s/step"
    if "eval_loss" in s:
        line += f"  | held-out CFM {s['eval_loss']:.4f}  mel L1 {s['eval_mel_l1']:.3f}"
    return line


@dataclasses.dataclass(frozen=True)
class StepLayout:
    """The flow's train state and batch, abstract, with their shardings on one mesh.

    What ``train()`` steps and checkpoints; shared with glmvoice-aot (``aot.speech_decoder_step``),
    which lowers the same step for a TPU topology.
    """

    make_model: Callable[[], Flow]
    graphdef: Any
    abs_params: Any
    param_sh: Any
    tx: optax.GradientTransformation
    init_train: Callable[[Any], dict]
    abs_train: Any
    train_sh: Any
    batch_sh: dict
    replicated: NamedSharding


def step_layout(config: mlc.ConfigDict, cfg: FlowConfig, mesh) -> StepLayout:
    """Abstract params (fp32), Adam state and batch shardings under ``config.axis_rules``."""

    def make_model():
        return Flow(cfg, rngs=nnx.Rngs(config.seed))

    preset = config.axis_rules
    graphdef, abs_params, param_sh = sharding.param_shardings(make_model, mesh, preset)
    tx = optim.make(config.optim, optim.schedule(config.schedule, config.total_steps), abs_params)
    replicated = NamedSharding(mesh, PartitionSpec())

    def init_train(params):
        return {
            "opt": tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(config.seed)),
        }

    abs_train = jax.eval_shape(init_train, abs_params)
    # Adam moments take their parameter's sharding; scalars and the key are replicated.
    train_sh = speech_tokenizer_setup.train_shardings(abs_train, abs_params, param_sh, replicated)
    batch_sh = {
        k: sharding.batch_sharding(mesh, preset, 3 if k == "mel" else 2) for k in BATCH_KEYS
    }
    return StepLayout(
        make_model, graphdef, abs_params, param_sh, tx, init_train, abs_train, train_sh, batch_sh,
        replicated,
    )  # fmt: skip


def jit_train_step(config: mlc.ConfigDict, s: StepLayout):
    """The train step jitted with the layout's shardings, params and train state donated."""
    return jax.jit(
        make_train_step(s.graphdef, s.tx, config),
        in_shardings=(s.param_sh, s.train_sh, s.batch_sh),
        out_shardings=(s.param_sh, s.train_sh, s.replicated),
        donate_argnums=(0, 1),
    )


def dry_run(config: mlc.ConfigDict) -> dict:
    """Shapes only: the flow's parameter count and per-device bytes of params + Adam state."""
    cfg = validate(config)
    mesh = sharding.make_mesh(config.mesh)
    s = step_layout(config, cfg, mesh)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s.abs_params))

    def per_device(tree, shardings) -> int:
        leaves = zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))
        return sum(int(np.prod(sh.shard_shape(x.shape))) * x.dtype.itemsize for x, sh in leaves)

    param_bytes = per_device(s.abs_params, s.param_sh)
    train_bytes = per_device(s.abs_train, s.train_sh)
    b, t = config.input.global_batch_size, frames_from_tokens(config.input.max_tokens,
                                                              cfg.input_frame_rate)  # fmt: skip
    print(f"flow parameters: {n:,} (vocab {cfg.vocab_size}, {cfg.input_frame_rate} Hz tokens)")
    print(f"mesh: {dict(mesh.shape)}; batch {b} x {config.input.max_tokens} tokens ({t} frames)")
    print(
        f"per-device bytes: params {param_bytes / 2**20:,.1f} MiB + Adam state "
        f"{train_bytes / 2**20:,.1f} MiB = {(param_bytes + train_bytes) / 2**20:,.1f} MiB"
    )
    return {"parameters": n, "mesh": dict(mesh.shape),
            "total_bytes_per_device": param_bytes + train_bytes}  # fmt: skip


def decoder_config(config: mlc.ConfigDict, cfg: FlowConfig) -> tuple[DecoderConfig, str]:
    """(the whole decoder's config, the HiFT's source path or "") for this flow and vocoder."""
    base = VARIANTS[config.model.variant]
    if config.vocoder == "griffin_lim":
        return dataclasses.replace(base, flow=cfg, vocoder="griffin_lim"), ""
    src = os.path.abspath(config.vocoder_from or config.init_from)
    hift_cfg = decoder_checkpoint.read_config(src)
    if hift_cfg.vocoder != "hift":
        raise ValueError(f"vocoder_from {src} has no HiFT (its vocoder is {hift_cfg.vocoder!r})")
    return DecoderConfig(flow=cfg, hift=hift_cfg.hift, vocoder="hift"), src


def init_flow(path: str, cfg: FlowConfig, new_tokenizer: bool, fresh: dict) -> dict:
    """The flow params of ``fresh`` (a pure dict of numpy arrays) replaced by ``path``'s flow.

    Raises:
      ValueError: in one line naming both, when the checkpoint's vocabulary / token rate differ
        from the config's (unless ``new_tokenizer``: the token embedding then stays fresh), or
        when its flow has other dimensions.
    """
    src_cfg, src = decoder_checkpoint.flow_params(path)
    theirs = src_cfg.flow
    shape_diff = [
        f"{f.name} {getattr(theirs, f.name)} vs {getattr(cfg, f.name)}"
        for f in dataclasses.fields(FlowConfig)
        if f.name not in _NON_SHAPE_FIELDS and getattr(theirs, f.name) != getattr(cfg, f.name)
    ]
    if shape_diff:
        raise ValueError(
            f"init_from {path} holds a flow of other dimensions (checkpoint vs config: "
            f"{'; '.join(shape_diff)}); set model.variant / model.* to the checkpoint's"
        )
    same_tokens = (theirs.vocab_size, theirs.input_frame_rate) == (
        cfg.vocab_size, cfg.input_frame_rate)  # fmt: skip
    if not same_tokens and not new_tokenizer:
        raise ValueError(
            f"init_from {path} is a flow for {theirs.vocab_size} tokens at "
            f"{theirs.input_frame_rate} Hz but the config names {cfg.vocab_size} tokens at "
            f"{cfg.input_frame_rate} Hz; set model.vocab_size / model.input_frame_rate to the "
            "checkpoint's, or --config.init_new_tokenizer=True to learn a new token embedding"
        )

    def pick(keypath, value):
        name = "/".join(str(getattr(k, "key", k)) for k in keypath)
        if name == EMBEDDING and not same_tokens:
            return value  # another tokenizer's codes: a fresh table
        if name not in src or src[name].shape != value.shape:
            raise ValueError(f"init_from {path} has no flow parameter {name} of {value.shape}")
        return src[name].astype(value.dtype)

    return jax.tree_util.tree_map_with_path(pick, fresh)


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until config.total_steps (resuming from WORKDIR/checkpoints); returns last metrics."""
    ####################################################################################
    # Validate, workdir, data
    ####################################################################################
    cfg = validate(config)
    loop.check_workdir(workdir)
    is_main = jax.process_index() == 0
    root = epath.Path(workdir)
    utts, errors = load_corpus(config, cfg)
    heldout = [u for i, u in enumerate(utts) if i % config.input.heldout_every == 0]
    heldout = heldout[: config.evals.max_utterances]
    train_utts = [u for i, u in enumerate(utts) if i % config.input.heldout_every != 0]
    if not train_utts or not heldout:
        raise ValueError(
            f"{len(utts)} usable utterances ({len(errors)} skipped, see errors.jsonl): too few "
            "for a training and a held-out split "
            f"(input.heldout_every={config.input.heldout_every})"
        )
    if is_main:
        (root / "config.json").write_text(config.to_json_best_effort(indent=2))
        (root / "errors.jsonl").write_text("".join(json.dumps(e) + "\n" for e in errors))
        print(
            f"data: {len(train_utts)} training utterances, {len(heldout)} held-out, "
            f"{len(errors)} skipped; flow vocab {cfg.vocab_size}, {cfg.input_frame_rate} Hz",
            flush=True,
        )

    ####################################################################################
    # Mesh, model & optimizer (created sharded)
    ####################################################################################
    mesh = sharding.make_mesh(config.mesh)
    preset = config.axis_rules
    dp = sharding.data_parallel_size(mesh, preset)
    for name, size in (("input.global_batch_size", config.input.global_batch_size),
                       ("evals.batch_size", config.evals.batch_size)):  # fmt: skip
        if size % dp:
            raise ValueError(f"{name} ({size}) must be a multiple of the {dp} data shards")

    layout = step_layout(config, cfg, mesh)
    graphdef, param_sh, train_sh = layout.graphdef, layout.param_sh, layout.train_sh
    batch_sh, replicated = layout.batch_sh, layout.replicated
    local = config.input.global_batch_size // jax.process_count()
    lo = jax.process_index() * local

    def to_global(batch: dict) -> dict:
        return {
            k: jax.make_array_from_process_local_data(batch_sh[k], batch[k][lo : lo + local])
            for k in BATCH_KEYS
        }

    ####################################################################################
    # Restore (resume) or initialise
    ####################################################################################
    ckpt = checkpoint.Checkpointer(
        str(root / "checkpoints"), keep=config.ckpt.keep, async_save=config.ckpt.async_save
    )
    decoder_cfg, vocoder_from = decoder_config(config, cfg)
    extra = {"trainer": TRAINER, "params": "flow", "vocoder_from": vocoder_from}
    meta = checkpoint.model_meta(decoder_cfg, None, extra={**extra, "config": config.to_dict()})
    with sharding.activate(mesh, preset):
        # The newest intact step (damaged ones are named and set aside); None when fresh.
        resumed = ckpt.restore_latest(
            abstract_params=checkpoint.abstract_like(layout.abs_params, param_sh),
            abstract_train=checkpoint.abstract_like(layout.abs_train, train_sh),
            data_iter=None,  # batches are a function of (seed, step): no iterator state
            meta=meta,
            items=("params", "train", "meta"),
        )
        if resumed is not None:
            start_step, params, train_state, _, _ = resumed
            print(f"resumed from step {start_step} ({ckpt.directory})", flush=True)
        else:
            start_step = 0
            params = jax.jit(
                lambda: nnx.to_pure_dict(nnx.state(layout.make_model())), out_shardings=param_sh
            )()
            if config.init_from:
                fresh = jax.tree.map(np.asarray, jax.device_get(params))
                new = init_flow(config.init_from, cfg, config.init_new_tokenizer, fresh)
                params = jax.device_put(new, param_sh)
                print(f"initialised the flow from {config.init_from}", flush=True)
            train_state = jax.jit(layout.init_train, out_shardings=train_sh)(params)

    ####################################################################################
    # Update step and evals
    ####################################################################################
    jit_step = jit_train_step(config, layout)
    eval_step = jax.jit(
        make_eval_step(graphdef, config.seed),
        in_shardings=(param_sh, batch_sh, sharding.batch_sharding(mesh, preset, 1)),
        out_shardings=replicated,
    )
    eb = config.evals.batch_size
    eval_local = eb // jax.process_count()
    eval_lo = jax.process_index() * eval_local
    eval_batches = []
    for s in range(0, len(heldout), eb):
        idx = np.arange(s, s + eb) % len(heldout)  # the last batch wraps; weight 0 on copies
        weight = (np.arange(s, s + eb) < len(heldout)).astype(np.float32)
        eval_batches.append((make_batch(heldout, idx, cfg, config.input.max_tokens), weight))
    weight_sh = sharding.batch_sharding(mesh, preset, 1)

    def run_eval(params) -> dict[str, float]:
        sums = {"sq_err": 0.0, "l1": 0.0, "frames": 0.0}
        for batch, weight in eval_batches:
            rows = {
                k: jax.make_array_from_process_local_data(
                    batch_sh[k], batch[k][eval_lo : eval_lo + eval_local]
                )
                for k in BATCH_KEYS
            }
            w = jax.make_array_from_process_local_data(
                weight_sh, weight[eval_lo : eval_lo + eval_local]
            )
            out = jax.device_get(eval_step(params, rows, w))
            for k in sums:
                sums[k] += float(out[k])
        denom = max(sums["frames"], 1.0) * cfg.output_size
        return {"eval_loss": sums["sq_err"] / denom, "eval_mel_l1": sums["l1"] / denom}

    ####################################################################################
    # Train loop
    ####################################################################################
    run = loop.Loop(config, mesh, ckpt, start_step, workdir=workdir, postfix=_console)
    every_eval = config.evals.every_steps
    if start_step == 0 and every_eval > 0:
        with sharding.activate(mesh, preset):
            run.writer.write(0, run_eval(params))  # the untrained model's held-out scores
    block_tokens = round(config.input.truncate_seconds * cfg.input_frame_rate)
    t_start = time.time()
    with sharding.activate(mesh, preset):
        while run.running:
            idx = batch_indices(run.step, len(train_utts), config.input.global_batch_size,
                                config.seed)  # fmt: skip
            rows = truncated(train_utts, idx, cfg, block_tokens, [config.seed, run.step, 1])
            batch = to_global(make_batch(rows, np.arange(len(rows)), cfg, config.input.max_tokens))
            params, train_state, out = jit_step(params, train_state, batch)
            run.stepped(out)
            step = run.step
            eval_now = every_eval > 0 and (step % every_eval == 0 or step == config.total_steps)
            if run.log_due(extra=eval_now):
                fetched, dt = run.fetch()
                scalars = {
                    k: float(np.mean([f[k] for f in fetched])) for k in ("loss", "grad_norm")
                }
                scalars.update(lr=float(fetched[-1]["lr"]), step_time=dt)
                scalars["minutes"] = (time.time() - t_start) / 60
                if eval_now:
                    t_eval = time.time()
                    scalars.update(run_eval(params))
                    run.exclude(time.time() - t_eval)
                run.log(scalars, announce=eval_now)
            run.checkpoint(params=params, train=train_state, data_iter=None, meta=meta)
    run.close()
    last = run.last
    if is_main:  # flow + vocoder in one checkpoint for glmvoice-decode / glmvoice-chat
        model = decoder_checkpoint.load_any(str(root / "checkpoints"))
        source = {"format": f"flow trained by {TRAINER}", "workdir": os.path.abspath(workdir),
                  "vocoder": decoder_cfg.vocoder, "vocoder_from": vocoder_from}  # fmt: skip
        decoder_checkpoint.write_decoder(model, str(root / "decoder"), source, step=run.step)
        print(f"decoder (flow + {decoder_cfg.vocoder}): {root / 'decoder'}", flush=True)
        summary = {"workdir": workdir, "step": run.step, **last}
        (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return last
