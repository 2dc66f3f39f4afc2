"""The canonical trainer: GLM decoder pre-training on packed, mixed token records.

``train(config, workdir)`` reads top to bottom in banner sections (big_vision style). The same
function runs the tiny CPU demo and the 9B model on a pod; only the config differs.

Train state is a pytree of plain dicts, stepped by one ``jax.jit`` with explicit in/out shardings
that donates it: ``params`` (nnx.to_pure_dict layout) and ``train`` = {opt, step, rng}.
"""

from __future__ import annotations

import dataclasses
import functools
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
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glmvoice_jax import checkpoint, config_lib, distributed, metrics, optim, sharding
from glmvoice_jax.corpora import dialogue_records
from glmvoice_jax.data import input as input_pipeline
from glmvoice_jax.inference import chat_template
from glmvoice_jax.models import glm, losses
from glmvoice_jax.trainers import loop, train_evals


def make_train_step(graphdef, tx, model_cfg: glm.GLMConfig, layout, config: mlc.ConfigDict):
    """The pure step: (params, train, batch) -> (params, train, metrics)."""
    accum = config.optim.grad_accum_steps
    chunk = config.loss.chunk_size
    skip_nonfinite = config.metrics.on_nonfinite == "skip"
    lr_fn = optim.schedule(config.schedule, config.total_steps)

    def loss_sums(params, mb, key):
        model = nnx.merge(graphdef, params)
        hidden = model.hidden_states(
            mb["tokens"], mb["segment_ids"], mb["positions"], dropout_key=key
        )
        targets, weights = losses.shift_targets(mb["tokens"], mb["segment_ids"], mb["loss_mask"])
        sums = losses.chunked_xent_sums(
            hidden,
            params["head"]["kernel"],
            targets,
            weights,
            layout.is_audio(targets),
            chunk_size=chunk,
        )
        return sums["loss_sum"], sums

    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def step_fn(params, train, batch):
        # Hidden dropout (model_cfg.dropout > 0): key fold_in(key(seed), step), then the
        # microbatch index; None keeps the dropout-free graph.
        key = None
        if model_cfg.dropout > 0:
            key = jax.random.fold_in(jax.random.wrap_key_data(train["rng"]), train["step"])
        if accum == 1:
            (_, sums), grads = grad_fn(params, batch, key)
        else:
            # Microbatch a takes rows {i : i % accum == a}, so each keeps the batch sharding.
            def split(x):
                b = x.shape[0]
                return x.reshape(b // accum, accum, *x.shape[1:]).swapaxes(0, 1)

            mbs = jax.tree.map(split, batch)  # (A, B / A, T)

            def body(carry, xs):
                g_acc, s_acc = carry
                a, mb = xs
                (_, sums), g = grad_fn(
                    params, mb, None if key is None else jax.random.fold_in(key, a)
                )
                g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
                return (g_acc, jax.tree.map(jnp.add, s_acc, sums)), None

            zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
            zeros_s = {k: jnp.zeros((), jnp.float32) for k in losses.SUM_KEYS}
            (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), (jnp.arange(accum), mbs))
        count = jnp.maximum(sums["count"], 1.0)
        grads = jax.tree.map(lambda g, p: (g / count).astype(p.dtype), grads, params)
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, train["opt"], params)
        new_params = optax.apply_updates(params, updates)
        stats = losses.summarize(sums)
        finite = jnp.isfinite(stats["loss"]) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
            new_params, new_opt = keep(new_params, params), keep(new_opt, train["opt"])
        new_train = {"opt": new_opt, "step": train["step"] + 1, "rng": train["rng"]}
        out = dict(stats, grad_norm=grad_norm, lr=lr_fn(train["step"]), finite=finite)
        return new_params, new_train, out

    return step_fn


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """Abstract train state and shardings of the jitted step; train() and cli/aot.py share them.

    Attributes:
      mesh: the device mesh.
      model_cfg: the model's hyperparameters (built once per run by ``config_lib.validate``).
      layout: the token layout.
      graphdef: the model's NNX graph definition.
      tx: the optax transformation.
      make_model: builds the model (call under ``sharding.activate``).
      init_train: params -> fresh train state {opt, step, rng}.
      abs_params: ShapeDtypeStructs of the params (nnx.to_pure_dict layout).
      param_sh: their NamedShardings.
      abs_train: ShapeDtypeStructs of the train state.
      train_sh: its NamedShardings.
      batch_sh: the sharding of each [global batch, seq_len] input array.
      replicated: the fully replicated sharding (metrics).
    """

    mesh: Mesh
    model_cfg: glm.GLMConfig
    layout: Any
    graphdef: Any
    tx: optax.GradientTransformation
    make_model: Callable[[], glm.GLMDecoder]
    init_train: Callable[[Any], dict]
    abs_params: Any
    param_sh: Any
    abs_train: Any
    train_sh: Any
    batch_sh: NamedSharding
    replicated: NamedSharding


BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


def step_shapes(config: mlc.ConfigDict, mesh: Mesh, model_cfg: glm.GLMConfig, layout) -> StepShapes:
    """Shapes and shardings of the train state on ``mesh``; allocates nothing.

    ``model_cfg`` and ``layout`` are the ones ``config_lib.validate`` built for this run (under
    ``init_from`` they come from the checkpoint's meta, which is read once).

    Raises:
      ValueError: when the global batch does not split over the data-parallel shards.
    """
    glm.check_remat_policy(model_cfg.remat_policy, list(mesh.devices.flat))
    preset = config.axis_rules
    dp = sharding.data_parallel_size(mesh, preset)
    gbs, accum = config.input.global_batch_size, config.optim.grad_accum_steps
    if gbs % (dp * accum):
        raise ValueError(
            f"input.global_batch_size ({gbs}) must be divisible by the data-parallel shards "
            f"({dp} = mesh data x fsdp) times optim.grad_accum_steps ({accum}); use a multiple of "
            f"{dp * accum}"
        )

    def make_model():
        return glm.GLMDecoder(model_cfg, rngs=nnx.Rngs(config.seed))

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
    # Optimizer leaves mirror the params (mu, nu) or are scalars (counts).
    train_sh = _train_shardings(abs_train, abs_params, param_sh, replicated)
    return StepShapes(
        mesh=mesh,
        model_cfg=model_cfg,
        layout=layout,
        graphdef=graphdef,
        tx=tx,
        make_model=make_model,
        init_train=init_train,
        abs_params=abs_params,
        param_sh=param_sh,
        abs_train=abs_train,
        train_sh=train_sh,
        batch_sh=sharding.batch_sharding(mesh, preset),
        replicated=replicated,
    )


def jit_train_step(config: mlc.ConfigDict, shapes: StepShapes):
    """The train step jitted with the shardings of ``shapes`` (donates params and train state)."""
    step_fn = make_train_step(shapes.graphdef, shapes.tx, shapes.model_cfg, shapes.layout, config)
    batch_shardings = {k: shapes.batch_sh for k in BATCH_KEYS}
    return jax.jit(
        step_fn,
        in_shardings=(shapes.param_sh, shapes.train_sh, batch_shardings),
        out_shardings=(shapes.param_sh, shapes.train_sh, shapes.replicated),
        donate_argnums=(0, 1),
    )


def abstract_batch(config: mlc.ConfigDict, shapes: StepShapes) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of one global batch, placed like the real one."""
    shape = (config.input.global_batch_size, config.input.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=shapes.batch_sh) for k in BATCH_KEYS}


def local_rows(batch_sh: NamedSharding, global_batch_size: int, seq_len: int) -> list[int]:
    """Global batch rows held by this process' devices (any device order, any replication)."""
    rows: set[int] = set()
    for index in batch_sh.addressable_devices_indices_map((global_batch_size, seq_len)).values():
        rows.update(range(*index[0].indices(global_batch_size)))
    return sorted(rows)


def dry_run(config: mlc.ConfigDict) -> dict:
    """Shapes only: parameter count and per-device bytes of params + AdamW state on the mesh.

    Nothing is allocated; the mesh may be larger than this machine (sizes must be explicit).
    """
    model_cfg = config_lib.model_config(config)
    mesh_cfg = dict(config.mesh)
    if any(v == -1 for v in mesh_cfg.values()):
        num = jax.device_count()
        logging.info("dry run: resolving mesh -1 against the %d local devices", num)
    else:
        num = int(np.prod(list(mesh_cfg.values())))
    shape = dict(zip(sharding.MESH_AXES, sharding.resolve_mesh_shape(mesh_cfg, num)))
    with nnx.logical_axis_rules(sharding.rules(config.axis_rules)):
        abs_model = nnx.eval_shape(lambda: glm.GLMDecoder(model_cfg, rngs=nnx.Rngs(0)))
        state = nnx.state(abs_model)
        specs = nnx.to_pure_dict(nnx.get_partition_spec(state))
    abs_params = nnx.to_pure_dict(state)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abs_params))
    leaves = zip(
        jax.tree.leaves(abs_params),
        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
    )
    param_bytes = sum(
        int(np.prod(sharding.shard_shape(x.shape, s, shape))) * x.dtype.itemsize for x, s in leaves
    )
    opt_bytes = 2 * param_bytes  # AdamW mu and nu, sharded like the params
    out = {
        "parameters": n_params,
        "mesh": shape,
        "param_bytes_per_device": param_bytes,
        "opt_bytes_per_device": opt_bytes,
        "total_bytes_per_device": param_bytes + opt_bytes,
    }
    print(f"model: {config.model.variant}  ({model_cfg.param_dtype} params)")
    print(f"parameters: {n_params:,}")
    print(f"mesh: {shape} ({int(np.prod(list(shape.values())))} devices)")
    print(
        f"per-device bytes: params {param_bytes / 2**20:,.1f} MiB + optimizer state "
        f"{opt_bytes / 2**20:,.1f} MiB = {(param_bytes + opt_bytes) / 2**20:,.1f} MiB"
    )
    return out


def check_chat_records(config: mlc.ConfigDict, layout, workdir: str) -> int:
    """Stage 2: SFT records must hold the chat prompt the run's checkpoint will be prompted with.

    The dialogue job wrote its template ids into job.json; they are compared with the template
    built from this run's layout and the text tokenizer of ``init_from`` (or UTF-8 bytes for the
    demo layouts). A mismatch (records made with another tokenizer or layout) is refused before
    the first step. Returns how many record folders were checked (0 when no source holds
    dialogue records, or when nothing names the run's text encoding: logged).
    """
    specs = input_pipeline.sources_from_config(config.input.sources, workdir)
    paths = [p for s in specs if s.format == "array_record" for p in s.paths]
    if not paths:
        return 0
    dirs = dialogue_records.shard_dirs(input_pipeline.list_shards(paths))
    tok = checkpoint.text_tokenizer(config.init_from) if config.init_from else None
    if tok is not None:
        encode, expects = (
            (lambda t: tok.encode(t, add_prefix=False)),
            (f"checkpoint {config.init_from}'s tokenizer"),
        )
    elif layout.text_is_utf8_bytes:
        encode, expects = (lambda t: list(t.encode("utf-8"))), "UTF-8 bytes"
    else:
        logging.warning("no text tokenizer to check SFT records against (init_from has none)")
        return 0
    names = {t for t, _ in layout.specials}
    if not all(t in names for t in chat_template.ROLE_TOKENS):
        return 0  # no chat template: dialogue records would fail the vocabulary check
    template = chat_template.ChatTemplate.for_layout(layout, encode, kind="chat")
    return dialogue_records.check_sources(dirs, template, expects)


def train(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains until config.total_steps (resuming from WORKDIR/checkpoints); returns last metrics.

    Multi-process: every process calls it with the same config and workdir (after
    ``distributed.initialize``). Each process feeds the global batch rows its devices hold;
    batches, checkpoints and the stop step on SIGTERM are the same whatever the process count.
    """
    ####################################################################################
    # Validate, workdir
    ####################################################################################
    model_cfg, layout = config_lib.validate(config)  # built once for the whole run
    loop.check_workdir(workdir)
    check_chat_records(config, layout, workdir)
    is_main = jax.process_index() == 0
    # Metrics, TensorBoard and the loss plot go to the workdir, gs:// included (metrics.py stages
    # them locally and copies them through epath).
    logs = workdir
    if is_main:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))

    ####################################################################################
    # Mesh, shapes and shardings
    ####################################################################################
    mesh = sharding.make_mesh(config.mesh)
    preset = config.axis_rules
    shapes = step_shapes(config, mesh, model_cfg, layout)
    param_sh, train_sh, batch_sh = shapes.param_sh, shapes.train_sh, shapes.batch_sh
    gbs, seq_len = config.input.global_batch_size, config.input.seq_len
    if jax.process_count() > 1:
        logging.info("%s", distributed.describe())

    ####################################################################################
    # Restore (resume) or initialise (fresh / init_from)
    ####################################################################################
    ckpt = checkpoint.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.ckpt.keep,
        async_save=config.ckpt.async_save,
    )
    meta = checkpoint.model_meta(model_cfg, layout, extra={"config": config.to_dict()})
    try:  # a user error below must close the manager (its threads) before the exit
        data_state = None
        with sharding.activate(mesh, preset):
            # The newest intact step (damaged ones are named and kept aside); None when fresh.
            resumed = ckpt.restore_latest(
                abstract_params=checkpoint.abstract_like(shapes.abs_params, param_sh),
                abstract_train=checkpoint.abstract_like(shapes.abs_train, train_sh),
                data_iter=None,  # read from every process' file: elastic resume
                meta=meta,
                read_extra=lambda step_dir: input_pipeline.read_row_states(step_dir / "data"),
            )
            if resumed is not None:
                start_step, params, train_state, _, data_state = resumed
                logging.info("resumed from %s at step %d", ckpt.directory, start_step)
                if is_main:
                    print(f"resumed from step {start_step} ({ckpt.directory})", flush=True)
            else:
                start_step = 0
                if config.init_from:
                    params = _load_init_params(
                        config.init_from, model_cfg, shapes.abs_params, param_sh
                    )
                    if is_main:
                        print(f"initialised weights from {config.init_from}", flush=True)
                else:
                    params = jax.jit(
                        lambda: nnx.to_pure_dict(nnx.state(shapes.make_model())),
                        out_shardings=param_sh,
                    )()
                train_state = jax.jit(shapes.init_train, out_shardings=train_sh)(params)

        ####################################################################################
        # Input pipeline: this process' rows of every global batch
        ####################################################################################
        rows = local_rows(batch_sh, gbs, seq_len)
        position = {r: i for i, r in enumerate(rows)}
        data_iter = input_pipeline.make_row_iterator(
            input_pipeline.sources_from_config(config.input.sources, workdir),
            rows=rows,
            global_batch_size=gbs,
            seq_len=seq_len,
            vocab_size=layout.vocab_size,
            seed=config.seed,
            num_workers=config.input.num_workers,
            prefetch_buffer_size=config.input.prefetch_buffer_size,
            start_state=data_state,
            shard_groups=config.input.get("shard_groups", 0),
            allow_shard_change=config.input.get("allow_shard_change", False),
        )
    except BaseException:
        ckpt.close()
        raise

    def to_global(local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        def piece(key, index):
            want = range(*index[0].indices(gbs))
            return local[key][[position[r] for r in want]]

        return {
            k: jax.make_array_from_callback((gbs, seq_len), batch_sh, functools.partial(piece, k))
            for k in BATCH_KEYS
        }

    ####################################################################################
    # Update step, compiled once for these shardings
    ####################################################################################
    first_batch = to_global(next(data_iter))
    with sharding.activate(mesh, preset):
        jit_step = loop.compile_step(
            jit_train_step(config, shapes), params, train_state, first_batch, announce=is_main
        )

    ####################################################################################
    # Train loop
    ####################################################################################
    peak = metrics.peak_flops(jax.devices()[0], config.metrics.peak_flops_per_device)
    flops_per_step = model_cfg.flops_per_token(seq_len) * gbs * seq_len
    tokens_per_step = gbs * seq_len
    run = loop.Loop(config, mesh, ckpt, start_step, workdir=logs, postfix=_postfix, desc="train")
    evals = train_evals.TrainEvals(
        train_evals.parse(config.get("evals")), model_cfg, layout, mesh, preset, param_sh,
        workdir, text_checkpoint=config.init_from or None,
    )  # fmt: skip
    batch = first_batch
    with sharding.activate(mesh, preset):
        while run.running:
            if batch is None:
                with run.blocked("data"):
                    batch = to_global(next(data_iter))
            run.before_step()
            params, train_state, out = jit_step(params, train_state, batch)
            batch = None
            run.stepped(out)
            if run.log_due():
                fetched, dt = run.fetch()
                scalars = {
                    k: float(np.mean([f[k] for f in fetched]))
                    for k in ("loss", "text_loss", "speech_loss", "grad_norm")
                }
                scalars["lr"] = float(fetched[-1]["lr"])
                scalars.update(run.breakdown)  # time/*, goodput: trainers/loop.py
                # dt: device step time (no data wait, checkpoint or host time); never from an
                # interval of only the compiling step.
                if run.timed_steps:
                    scalars["step_time"] = dt
                    scalars["tokens_per_sec"] = tokens_per_step / dt
                    per_device = tokens_per_step / dt / jax.device_count()
                    scalars["tokens_per_sec_per_device"] = per_device
                    scalars["mfu"] = flops_per_step / dt / jax.device_count() / peak
                run.log(scalars)
            run.checkpoint(params=params, train=train_state, data_iter=data_iter, meta=meta)
            if evals.due(run.step):  # on the live params; a failing task logs and is skipped
                start = time.perf_counter()
                scores = evals.run(run.step, params)
                run.writer.write(run.step, scores)  # metrics.jsonl + TensorBoard
                if is_main and scores:
                    line = "  ".join(f"{k} {v:.4g}" for k, v in sorted(scores.items()))
                    run.bar.write(f"step {run.step}/{run.total}  {line}")
                run.exclude(time.perf_counter() - start)
    run.close()
    step, last = run.step, run.last
    if is_main:
        png = metrics.plot_losses(logs, str(epath.Path(logs) / "loss.png"))
        summary = {"workdir": workdir, "step": step, "loss_plot": png, **last}
        (epath.Path(workdir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return last


def _train_shardings(abs_train, abs_params, param_sh, replicated):
    """Opt-state leaves shaped like a param (AdamW mu/nu) take its sharding; others replicate."""
    flat_s = jax.tree.leaves(param_sh, is_leaf=lambda x: isinstance(x, NamedSharding))
    param_paths = {
        jax.tree_util.keystr(p): s
        for (p, _), s in zip(jax.tree_util.tree_leaves_with_path(abs_params), flat_s)
    }

    def pick(path, leaf):
        key = jax.tree_util.keystr(path)
        for ppath, s in param_paths.items():
            if key.endswith(ppath) and leaf.ndim > 0:
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abs_train)


def _load_init_params(path: str, model_cfg: glm.GLMConfig, abs_params, param_sh):
    """Weights-only init from a checkpoint (fresh optimizer); shapes must match the model."""
    meta = checkpoint.read_meta(path)
    src = checkpoint.model_config_from_meta(
        meta, expect=type(model_cfg), what=f"init_from checkpoint {path}"
    )
    arch = (
        "vocab_size",
        "embed_dim",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "mlp_dim",
    )
    diff = {
        f: (getattr(src, f), getattr(model_cfg, f))
        for f in arch
        if getattr(src, f) != getattr(model_cfg, f)
    }
    if diff:
        raise ValueError(
            f"init_from checkpoint {path} has another architecture: "
            + ", ".join(f"{k} {a} (checkpoint) vs {b} (config)" for k, (a, b) in diff.items())
        )
    # Restore in the checkpoint's dtype, then cast to the configured parameter dtype.
    src_dtype = jnp.dtype(src.param_dtype)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, src_dtype, sharding=s), abs_params, param_sh
    )
    params = checkpoint.restore_params(path, target)
    return jax.tree.map(lambda x, a: x.astype(a.dtype), params, abs_params)


def _postfix(s: dict[str, float]) -> str:
    """The progress bar's metrics: loss by modality, throughput and MFU."""
    line = f"loss {s['loss']:.4f} text {s['text_loss']:.3f} speech {s['speech_loss']:.3f}"
    if "mfu" in s:
        line += f" {s['tokens_per_sec']:,.0f} tok/s mfu {100 * s['mfu']:.1f}%"
    return line
