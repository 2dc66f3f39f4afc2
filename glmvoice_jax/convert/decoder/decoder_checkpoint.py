"""Speech-decoder checkpoints in the project format (Orbax, params + meta), and loading either kind.

Ref: house_style.md §12 (every checkpoint carries its model config; CKPT = manager root or step
dir), decoder.md §11.4 (coverage checks, config saved with the weights). The release layout
(``config.yaml``, ``flow.pt``, ``hift.pt``) is read by ``convert/decoder_pt.py``.

Checkpoint layout (``checkpoint.write_weights``, step 0):

  <dst>/0/params   {"flow": {...}, "hift": {...}}: the ``SpeechDecoder`` parameter tree, float32,
                   keyed by attribute name (list indices as strings), channel-last layouts
  <dst>/0/meta     {"model_class": "DecoderConfig", "model": config_to_dict(config),
                    "extra": {"source": {...}}}

``glmvoice-import`` dispatches a directory holding the three release files to
``import_decoder``; ``glmvoice-decode`` / ``glmvoice-export-decoder`` load with ``load_any``.

Checkpoints of the flow trainer (``trainers/speech_decoder.py``: params = the flow's pure dict,
meta ``extra.params == "flow"``) load too: the flow from the checkpoint, the vocoder named by the
meta's ``DecoderConfig.vocoder`` ("griffin_lim": no parameters; "hift": the HiFT of the decoder
checkpoint or release directory in ``extra.vocoder_from``). ``write_decoder`` turns any loaded
decoder into a self-contained decoder checkpoint (the trainer writes ``WORKDIR/decoder``).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx

from glmvoice_jax import checkpoint
from glmvoice_jax.convert.decoder import decoder_pt
from glmvoice_jax.convert.io import safetensors_dir
from glmvoice_jax.models.speech_decoder.config import DecoderConfig, config_to_dict
from glmvoice_jax.models.speech_decoder.flow import Flow
from glmvoice_jax.models.speech_decoder.speech_decoder import SpeechDecoder

MODEL_CLASS = "DecoderConfig"
RELEASE_FILES = ("config.yaml", "flow.pt", "hift.pt")


def is_release_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with ``config.yaml``, ``flow.pt`` and ``hift.pt``."""
    return all(os.path.isfile(os.path.join(path, f)) for f in RELEASE_FILES)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a/b/0/c": x} → {"a": {"b": {"0": {"c": x}}}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of ``_nest``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def import_decoder(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> dict:
    """Converts a glm-4-voice-decoder release directory into an Orbax checkpoint at step 0.

    The checkpoint is assembled in a temporary directory next to ``dst_dir`` and renamed into
    place only when complete, so an error leaves nothing at ``dst_dir``.

    Args:
      src_dir: directory with ``config.yaml``, ``flow.pt``, ``hift.pt``.
      dst_dir: checkpoint root to create; must not exist.

    Returns:
      The meta written with the weights.

    Raises:
      FileExistsError: ``dst_dir`` exists.
      FileNotFoundError: a release file is missing.
      ValueError: bad config, unreadable .pt, or keys / shapes that do not match the config.
    """
    src, dst = os.path.abspath(src_dir), os.path.abspath(dst_dir)
    if os.path.exists(dst):
        raise FileExistsError(f"--output {dst} already exists; remove it or choose a new path")
    missing = [f for f in RELEASE_FILES if not os.path.isfile(os.path.join(src, f))]
    if missing:
        raise FileNotFoundError(
            f"{src} is not a glm-4-voice-decoder directory: missing {missing} "
            f"(expected {', '.join(RELEASE_FILES)})"
        )
    config = decoder_pt.load_config(os.path.join(src, "config.yaml"))
    states = []
    for name in ("flow.pt", "hift.pt"):
        path = os.path.join(src, name)
        state = decoder_pt.load_state_dict(path)
        for key, value in state.items():  # NaN / inf refused by name (unless allowed)
            safetensors_dir.refuse_nonfinite(key, np.asarray(value), path)
        states.append(state)
    params = decoder_pt.convert_state_dicts(config, *states)
    _check_against_model(config, params)
    meta = {  # as stored: JSON types (tuples become lists)
        "model_class": MODEL_CLASS,
        "model": config_to_dict(config),
        "extra": {
            "source": {
                "format": "glm-4-voice-decoder (config.yaml + flow.pt + hift.pt)",
                "path": src,
                "num_params": int(sum(v.size for v in params.values())),
            }
        },
    }
    meta = json.loads(json.dumps(meta))
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.importing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        checkpoint.write_weights(tmp, _nest(params), meta)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _check_against_model(config: DecoderConfig, params: dict[str, np.ndarray]) -> None:
    shapes = decoder_pt.param_shapes(config)
    unknown, missing = sorted(set(params) - set(shapes)), sorted(set(shapes) - set(params))
    bad = [
        f"{k}: {params[k].shape} vs model {shapes[k]}"
        for k in sorted(set(params) & set(shapes))
        if tuple(params[k].shape) != shapes[k]
    ]
    if unknown or missing or bad:
        raise ValueError(
            f"decoder parameters do not match the model built from the config: values without a "
            f"parameter {unknown}; parameters without a value {missing}; shape mismatches {bad}"
        )


def load_decoder_checkpoint(ckpt: str | os.PathLike) -> SpeechDecoder:
    """Loads a decoder checkpoint written by ``import_decoder`` / ``write_decoder`` or the trainer.

    Args:
      ckpt: a checkpoint manager root (latest step) or one step directory.

    Returns:
      The decoder, parameters on the default device.

    Raises:
      FileNotFoundError: no complete checkpoint at ``ckpt``.
      ValueError: the checkpoint holds another model class, or its config has unknown fields.
    """
    ckpt = os.fspath(ckpt)
    meta = checkpoint.read_meta(ckpt)
    if meta.get("model_class") != MODEL_CLASS:
        raise ValueError(
            f"checkpoint {ckpt} holds a {meta.get('model_class')!r} model, not the speech decoder "
            f"({MODEL_CLASS}); pass a checkpoint made by glmvoice-import from a "
            "glm-4-voice-decoder directory (or that directory itself)"
        )
    config = checkpoint.model_config_from_meta(meta)
    if is_flow_checkpoint(meta):
        return _load_trained(ckpt, meta, config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = {
        k: jax.ShapeDtypeStruct(shape, np.float32, sharding=device)
        for k, shape in decoder_pt.param_shapes(config).items()
    }
    restored = checkpoint.restore_params(ckpt, _nest(abstract))
    return decoder_pt.build_decoder(config, _flatten(restored))


def is_flow_checkpoint(meta: dict) -> bool:
    """True for a checkpoint of the flow trainer (its params item holds the flow only)."""
    return meta.get("extra", {}).get("params") == "flow"


def restore_flow(ckpt: str, config: DecoderConfig) -> dict[str, np.ndarray]:
    """{path: array} of the flow in a flow-trainer checkpoint (paths inside the Flow)."""
    abs_flow = nnx.eval_shape(lambda: Flow(config.flow, rngs=decoder_pt._FixedKeyRngs()))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        nnx.to_pure_dict(nnx.state(abs_flow)),
    )
    restored = checkpoint.restore_params(ckpt, abstract)
    return {k: np.asarray(v) for k, v in _flatten(restored).items()}


def flat_params(module: nnx.Module) -> dict[str, np.ndarray]:
    """{path: array} of every parameter of a (sub)module, paths as in ``param_shapes``."""
    flat = nnx.to_flat_state(nnx.state(module))
    return {decoder_pt._join(path): np.asarray(var.get_value()) for path, var in flat}


def read_config(path: str | os.PathLike) -> DecoderConfig:
    """The DecoderConfig of a release directory or a decoder checkpoint, without its weights."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"decoder checkpoint {path} does not exist")
    if is_release_dir(path):
        return decoder_pt.load_config(os.path.join(path, "config.yaml"))
    meta = checkpoint.read_meta(path)
    if meta.get("model_class") != MODEL_CLASS:
        raise ValueError(
            f"{path} holds a {meta.get('model_class')!r} model, not the speech decoder "
            f"({MODEL_CLASS})"
        )
    return checkpoint.model_config_from_meta(meta)


def flow_params(path: str | os.PathLike) -> tuple[DecoderConfig, dict[str, np.ndarray]]:
    """(config, {path inside the Flow: array}) of any decoder checkpoint or release directory."""
    path = os.fspath(path)
    if not is_release_dir(path):
        meta = checkpoint.read_meta(path)
        if meta.get("model_class") == MODEL_CLASS and is_flow_checkpoint(meta):
            config = checkpoint.model_config_from_meta(meta)
            return config, restore_flow(path, config)
    model = load_any(path)
    return model.config, flat_params(model.flow)


def _load_trained(ckpt: str, meta: dict, config: DecoderConfig) -> SpeechDecoder:
    """A flow-trainer checkpoint + the vocoder its meta names → the whole decoder."""
    flat = {f"flow/{k}": v for k, v in restore_flow(ckpt, config).items()}
    if config.vocoder == "hift":
        src = meta.get("extra", {}).get("vocoder_from") or ""
        if not src or not os.path.exists(src):
            raise FileNotFoundError(
                f"{ckpt} is a trained flow whose HiFT vocoder comes from {src!r}, which does not "
                "exist; use the trainer's WORKDIR/decoder (flow + HiFT in one checkpoint)"
            )
        vocoder = load_any(src)
        if vocoder.config.hift != config.hift or vocoder.config.vocoder != "hift":
            raise ValueError(
                f"{ckpt}: the vocoder checkpoint {src} no longer holds the HiFT the flow was "
                "trained with (another config); use the trainer's WORKDIR/decoder"
            )
        flat.update({f"hift/{k}": v for k, v in flat_params(vocoder.hift).items()})
    return decoder_pt.build_decoder(config, flat)


def write_decoder(model: SpeechDecoder, dst: str | os.PathLike, source: dict, step: int = 0):
    """Writes ``model`` (flow + vocoder) as a self-contained decoder checkpoint at ``step``.

    ``source`` goes to ``meta["extra"]["source"]`` (where the weights came from). ``dst`` may
    hold earlier steps (the trainer rewrites its WORKDIR/decoder); the newest step is loaded.
    """
    params = flat_params(model)
    _check_against_model(model.config, params)
    meta = {
        "model_class": MODEL_CLASS,
        "model": config_to_dict(model.config),
        "extra": {"source": dict(source)},
    }
    meta = json.loads(json.dumps(meta))
    checkpoint.write_weights(os.fspath(dst), _nest(params), meta, step=step)
    return meta


def load_any(path: str | os.PathLike) -> SpeechDecoder:
    """A decoder from a project checkpoint or, for convenience, a raw release directory.

    Raises:
      FileNotFoundError / ValueError: from the loader that applies, naming the path.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    if is_release_dir(path):
        return decoder_pt.load_decoder(path)
    return load_decoder_checkpoint(path)


def write_untrained(config: DecoderConfig, dst: str | os.PathLike, seed: int = 0) -> dict:
    """A decoder checkpoint with random weights: a stand-in, not a vocoder.

    For tiny end-to-end runs (the ``make chat-demo`` round trip) when no trained decoder of the
    right codebook exists; its audio is noise-like. ``meta["extra"]["source"]`` says so. Values
    are drawn with numpy (eager NNX initialisation of the decoder takes ~17 s on CPU): weights
    N(0, 0.05^2), biases 0, norm scales 1.

    Returns:
      The meta written with the weights.
    """
    rng = np.random.default_rng(seed)

    def value(name: str, shape: tuple[int, ...]) -> np.ndarray:
        leaf = name.rsplit("/", 1)[-1]
        if leaf == "bias":
            return np.zeros(shape, np.float32)
        if leaf == "scale":
            return np.ones(shape, np.float32)
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)

    params = {k: value(k, shape) for k, shape in decoder_pt.param_shapes(config).items()}
    _check_against_model(config, params)
    meta = {
        "model_class": MODEL_CLASS,
        "model": config_to_dict(config),
        "extra": {"source": {"format": "untrained (random weights)", "seed": int(seed)}},
    }
    meta = json.loads(json.dumps(meta))
    checkpoint.write_weights(os.fspath(dst), _nest(params), meta)
    return meta
