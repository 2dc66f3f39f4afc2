"""The speech-tokenizer trainer's state: layout, shardings and initialisation.

The train state is the whole model state as one pure dict (``nnx.to_pure_dict``: Params, the
frozen position table and the VQStats codebook / EMA buffers) plus a mask that marks the Params,
the only leaves the optimizer trains (``param_mask``, ``subset``, ``merge``). ``state_layout``
gives the abstract state and its shardings, shared by ``train()`` and glmvoice-aot; ``init_from``
imports weights (whisper-large-v3 or an Orbax checkpoint -> Whisper-VQ) and ``codebook_frames`` /
``set_codebook`` give the data-dependent codebook init (glm4voice.md §12 #3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glmvoice_jax import checkpoint, optim, sharding
from glmvoice_jax.convert.whisper import hf_whisper as convert_whisper
from glmvoice_jax.models.whisper_vq import WhisperVQ, WhisperVQConfig

_QUANTIZER = "['encoder']['quantizer']"


# ---------------------------------------------------------------------------------------------
# Layout: the whole model state as one pure dict; a mask marks the Params.


def param_mask(make_model: Callable[[], WhisperVQ], abs_params: Any) -> Any:
    """Bool tree like ``abs_params``: True on nnx.Param leaves (what the optimizer trains)."""
    trainable = nnx.to_pure_dict(nnx.state(nnx.eval_shape(make_model), nnx.Param))
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(trainable)}
    return jax.tree_util.tree_map_with_path(
        lambda p, _: jax.tree_util.keystr(p) in paths, abs_params
    )


def subset(tree: Mapping, mask: Mapping, *, keep: bool) -> dict:
    """The leaves of a nested dict whose mask equals ``keep`` (empty branches dropped)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            sub = subset(v, mask[k], keep=keep)
            if sub:
                out[k] = sub
        elif bool(mask[k]) == keep:
            out[k] = v
    return out


def merge(base: Mapping, update: Mapping) -> dict:
    """Nested-dict union; ``update`` wins on shared leaves."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(base[k], v) if isinstance(v, Mapping) and k in base else v
    return out


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """The model, optimizer and train-state layout of ``train()``, created sharded on a mesh.

    Shared with glmvoice-aot (``trainers/aot.speech_tokenizer_step``), which lowers the same step.
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


def state_layout(config: mlc.ConfigDict, mesh: Mesh, model_cfg: WhisperVQConfig) -> StateLayout:
    """Abstract params and train state with their shardings under ``config.axis_rules``.

    ``model_cfg`` is the one ``speech_tokenizer_config.validate`` built for this run.
    """

    def make_model():
        return WhisperVQ(model_cfg, rngs=nnx.Rngs(config.seed))

    graphdef, abs_params, param_sh = sharding.param_shardings(make_model, mesh, config.axis_rules)
    mask = param_mask(make_model, abs_params)
    tx = optim.make(
        config.optim,
        optim.schedule(config.schedule, config.total_steps),
        subset(abs_params, mask, keep=True),
    )
    replicated = NamedSharding(mesh, PartitionSpec())

    def init_train(params):
        return {
            "opt": tx.init(subset(params, mask, keep=True)),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(config.seed)),
            "last_used": jnp.full((model_cfg.codebook_size,), -(2**30), jnp.int32),
        }

    abs_train = jax.eval_shape(init_train, abs_params)
    train_sh = sharding.train_state_shardings(abs_train, abs_params, param_sh, replicated)
    return StateLayout(
        make_model, graphdef, abs_params, param_sh, mask, tx, init_train, abs_train, train_sh,
        replicated,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Initialisation: weights from another checkpoint, data-dependent codebook.


def _load_source(path: str) -> tuple[WhisperVQConfig, dict]:
    if convert_whisper.is_hf_checkpoint(path):  # HF: stock Whisper or the release
        cfg, model = convert_whisper.load_checkpoint(path)
        return cfg, nnx.to_pure_dict(nnx.state(model))
    cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(path))
    if not isinstance(cfg, WhisperVQConfig):
        raise ValueError(f"init_from {path} holds a {type(cfg).__name__}, not a WhisperVQConfig")
    abs_model = nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0)))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        nnx.to_pure_dict(nnx.state(abs_model)),
    )
    return cfg, checkpoint.restore_params(path, target)


def init_from(path: str, cfg: WhisperVQConfig, params: Any, param_sh: Any) -> tuple[Any, bool]:
    """Copies matching weights from a HF Whisper directory or an Orbax checkpoint.

    Every variable of this model comes from the source (same path and shape), except:
    ``embed_positions2`` (copied from the first rows of the source's ``embed_positions`` when the
    source has none, §12 #4), the quantizer (kept fresh when the source has none) and the decoder
    (kept fresh, with a warning, when the source has none: the released tokenizer).

    Returns:
      (params placed with ``param_sh``, whether the codebook is still fresh).

    Raises:
      ValueError: listing variables the source lacks or holds with another shape.
    """
    _, src = _load_source(path)
    flat_src = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(src)}
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out, missing, wrong, fresh_decoder = [], [], [], False
    for p, leaf in leaves:
        key = jax.tree_util.keystr(p)
        value = flat_src.get(key)
        if value is None and key == "['encoder']['embed_positions2']":
            value = flat_src.get("['encoder']['embed_positions']")
            value = None if value is None else np.asarray(value)[: leaf.shape[0]]
        if value is None:
            if key.startswith(_QUANTIZER):
                out.append(leaf)
                continue
            if key.startswith("['decoder']"):
                fresh_decoder = True
                out.append(leaf)
                continue
            missing.append(key)
        elif tuple(value.shape) != tuple(leaf.shape):
            wrong.append(f"{key}: {tuple(value.shape)} vs {tuple(leaf.shape)}")
        else:
            out.append(np.asarray(value).astype(leaf.dtype))
    if missing or wrong:
        raise ValueError(
            f"init_from {path} does not fit the configured model: missing {missing}; shapes "
            f"(checkpoint vs model) {wrong}. Match the model dims (model.*) to the checkpoint"
        )
    if fresh_decoder:
        print(f"warning: {path} has no decoder weights; the Whisper decoder starts from random")
    fresh_codebook = f"{_QUANTIZER}['codebook']" not in flat_src
    return jax.device_put(jax.tree_util.tree_unflatten(treedef, out), param_sh), fresh_codebook


def codebook_frames(
    config: mlc.ConfigDict,
    model_cfg: WhisperVQConfig,
    graphdef: Any,
    params: Any,
    data_iter: Any,
    to_global: Callable[[dict], dict],
    features: Callable[[dict, WhisperVQConfig], tuple[jax.Array, jax.Array]],
) -> np.ndarray:
    """[C, D] codebook init: a .npy file, or frames at the quantizer sampled from training batches.

    "data": pre-quantizer frames of the first ``vq.init_batches`` batches, sampled without
    replacement (glm4voice.md §12 #3). With fewer valid frames than codes, the rest are drawn
    again with a little noise (and a warning).
    """
    if config.vq.codebook_init.endswith(".npy"):
        return np.load(config.vq.codebook_init)

    def pre_quant(p, batch):
        model = nnx.merge(graphdef, p)
        mel, mel_mask = features(batch, model_cfg)
        out = model.encoder(mel, mel_mask, stop_before_quantizer=True)
        return out.hidden, out.mask

    fn = jax.jit(pre_quant)
    frames = []
    for _ in range(config.vq.init_batches):
        out = fn(params, to_global(next(data_iter)))
        hidden, mask = (multihost_utils.process_allgather(x, tiled=True) for x in out)
        frames.append(np.asarray(hidden, np.float32)[np.asarray(mask)])
    frames = np.concatenate(frames)  # (N, D)
    k = model_cfg.codebook_size
    rng = np.random.default_rng(config.seed)
    if len(frames) >= k:
        return frames[rng.choice(len(frames), k, replace=False)]
    print(
        f"warning: {len(frames)} frames for {k} codes; the rest are noisy repeats (raise "
        "vq.init_batches)"
    )
    extra = frames[rng.choice(len(frames), k - len(frames))]
    extra = extra + rng.normal(0, 0.01 * frames.std(), extra.shape).astype(np.float32)
    return np.concatenate([frames, extra])


def set_codebook(params: dict, frames: Any, param_sh: dict) -> dict:
    """Codebook = frames, EMA weight = frames, EMA count = 1 (a copy of params with these set)."""
    q = dict(params["encoder"]["quantizer"])
    sh = param_sh["encoder"]["quantizer"]
    expected = tuple(q["codebook"].shape)
    if tuple(frames.shape) != expected:
        raise ValueError(f"codebook init has shape {frames.shape}; the quantizer needs {expected}")
    q["codebook"] = jax.device_put(jnp.asarray(frames, q["codebook"].dtype), sh["codebook"])
    q["ema_weight"] = jax.device_put(jnp.asarray(frames, jnp.float32), sh["ema_weight"])
    q["ema_count"] = jax.device_put(jnp.ones(q["ema_count"].shape, jnp.float32), sh["ema_count"])
    return merge(params, {"encoder": {"quantizer": q}})
