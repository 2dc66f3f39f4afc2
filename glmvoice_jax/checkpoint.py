"""Orbax checkpoints: exact resume, restore onto any mesh, and a self-describing model config.

Layout of a checkpoint directory (an Orbax CheckpointManager root, e.g. WORKDIR/checkpoints):

  <step>/params   model parameters (nested dict of arrays, OCDBT)
  <step>/train    optimizer state, step, RNG key (absent in imported weight-only checkpoints)
  <step>/data     Grain iterator state, one JSON per process (absent in imported checkpoints)
  <step>/meta     JSON: {"model_class", "model", "token_layout"?, "tokenizer"?, "extra"?}

A step directory appears only once complete: Orbax writes to a temporary name and renames it on
commit, so a save interrupted by kill -9 is never taken as the latest (leftover temporaries are
cleaned up on the next start). Restores always pass an abstract target whose leaves carry
shardings on the *current* mesh, which is what makes resharding and device-count changes work
(jax_stack_notes.md §6.3).

A CKPT argument of any tool is either a manager root (the latest step is used) or one step dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from glmvoice_jax.data import text_tokenizer as text_tokenizer_lib
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.models import glm, whisper_vq
from glmvoice_jax.models.speech_decoder import config as decoder_config

MODEL_CLASSES = {
    "GLMConfig": glm.GLMConfig,
    "WhisperVQConfig": whisper_vq.WhisperVQConfig,
    "DecoderConfig": decoder_config.DecoderConfig,
}
# Configs that nest dataclasses are rebuilt by their own from-dict (which rejects unknown fields).
_FROM_DICT = {"DecoderConfig": decoder_config.config_from_dict}


def model_meta(
    model_cfg: Any,
    layout: token_layout_lib.TokenLayout | None,
    tokenizer: Mapping | None = None,
    extra: Mapping | None = None,
) -> dict:
    """The JSON that every checkpoint carries so tools can load it without a config flag."""
    meta = {
        "model_class": type(model_cfg).__name__,
        "model": dataclasses.asdict(model_cfg),
    }
    if layout is not None:  # None for models without an LM vocabulary (the speech tokenizer)
        meta["token_layout"] = layout.to_json()
    if tokenizer:
        meta["tokenizer"] = dict(tokenizer)
    if extra:
        meta["extra"] = dict(extra)
    return meta


def model_config_from_meta(meta: Mapping) -> Any:
    """Rebuilds the frozen model dataclass; unknown fields are an error, not ignored."""
    cls_name = meta.get("model_class")
    if cls_name not in MODEL_CLASSES:
        raise ValueError(
            f"checkpoint meta names model class {cls_name!r}; known: {sorted(MODEL_CLASSES)}"
        )
    if cls_name in _FROM_DICT:
        return _FROM_DICT[cls_name](meta["model"])
    cls = MODEL_CLASSES[cls_name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(meta["model"]) - fields
    if unknown:
        raise ValueError(
            f"checkpoint model config has unknown fields {sorted(unknown)} for {cls_name}; "
            f"known fields: {sorted(fields)}"
        )
    return cls(**meta["model"])


class Checkpointer:
    """CheckpointManager over the items params / train / data / meta."""

    ITEMS = ("params", "train", "data", "meta")

    def __init__(self, directory: str, *, keep: int | None = 3, async_save: bool = True):
        self.directory = _absolute(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            ),
            item_names=self.ITEMS,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        *,
        params: Any,
        train: Any,
        data_iter: grain.DatasetIterator | None,
        meta: Mapping,
    ) -> None:
        items = {
            "params": ocp.args.StandardSave(params),
            "train": ocp.args.StandardSave(train),
            "meta": ocp.args.JsonSave(dict(meta)),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self,
        step: int,
        *,
        abstract_params: Any,
        abstract_train: Any,
        data_iter: grain.DatasetIterator | None,
    ) -> tuple[Any, Any, dict]:
        """Restores onto the shardings of the abstract targets; the data iterator in place."""
        items = {
            "params": ocp.args.StandardRestore(abstract_params),
            "train": ocp.args.StandardRestore(abstract_train),
            "meta": ocp.args.JsonRestore(),
        }
        if data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["params"], out["train"], dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        # Orbax's close() does not join the tmp-directory cleanup it starts at construction; a
        # process that exits right after (a user error at start-up) would print its thread's
        # traceback at shutdown. No public API waits for it (orbax 0.11), hence the guarded call.
        getattr(self.manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
        self.manager.close()


def _absolute(path: str) -> epath.Path:
    """Orbax's OCDBT layer refuses relative local paths; URLs (gs://...) pass unchanged."""
    return epath.Path(path if "://" in str(path) else os.path.abspath(path))


def resolve(path: str) -> tuple[epath.Path, int]:
    """CKPT argument -> (manager root, step). Accepts a manager root or one step directory.

    Raises:
      FileNotFoundError: naming the path when it holds no complete checkpoint.
    """
    p = _absolute(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if (p / "meta").exists() and (p / "params").exists() and p.name.isdigit():
        return p.parent, int(p.name)
    if (p / "checkpoints").is_dir() and not any(c.name.isdigit() for c in p.iterdir()):
        p = p / "checkpoints"  # a training workdir
    steps = sorted(int(c.name) for c in p.iterdir() if c.name.isdigit() and (c / "meta").exists())
    if not steps:
        raise FileNotFoundError(
            f"no complete checkpoint under {path}: expected a step directory with params/ and "
            "meta/, or a directory of such steps (e.g. WORKDIR/checkpoints)"
        )
    return p, steps[-1]


def read_meta(path: str) -> dict:
    root, step = resolve(path)
    meta_file = root / str(step) / "meta" / "metadata"  # where ocp.args.JsonSave writes
    if not meta_file.exists():
        raise FileNotFoundError(f"checkpoint {root / str(step)} has no meta item ({meta_file})")
    return json.loads(meta_file.read_text())


def restore_params(path: str, abstract_params: Any) -> Any:
    """Restores only the params item (weights-only init, scoring, export) onto given shardings."""
    root, step = resolve(path)
    mngr = ocp.CheckpointManager(
        root,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("params",),
    )
    try:
        out = mngr.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
        )
    finally:
        mngr.close()
    return out["params"]


def write_weights(dst: str, params: Any, meta: Mapping, step: int = 0) -> None:
    """A weight-only checkpoint (params + meta) at ``step``, written atomically by Orbax."""
    os.makedirs(dst, exist_ok=True)
    mngr = ocp.CheckpointManager(
        _absolute(dst),
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True),
        item_names=("params", "meta"),
    )
    mngr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(dict(meta))
        ),
        force=True,
    )
    mngr.wait_until_finished()
    mngr.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of ``tree`` placed with ``shardings`` (a matching tree)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def text_tokenizer(path: str) -> text_tokenizer_lib.TextTokenizer | None:
    """The text tokenizer recorded in a checkpoint's meta (None if it records none)."""
    root, _ = resolve(path)
    meta = read_meta(path).get("tokenizer")
    if not meta:
        return None
    return text_tokenizer_lib.from_meta(meta, str(epath.Path(root) / meta.get("dir", "tokenizer")))
