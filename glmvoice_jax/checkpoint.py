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

A CKPT argument of any tool is either a manager root (the newest complete step is used) or one
step dir.

Damaged steps (issue 17). A step can still be incomplete on disk: a copy interrupted half-way
(an empty or partial step directory, no commit marker), a params file lost or truncated later.
:func:`step_problem` finds these from the files alone (a truncated or missing data file through
the OCDBT B-tree, which records every value's file, offset and length, without reading the
data); :meth:`Checkpointer.restore_latest` also catches what only a read finds (bytes corrupted
in place). A resume then falls back to the newest intact step, printing one line per damaged
step, which is kept, renamed ``<step>.damaged`` (never deleted), so that the run can save that
step again. No intact step left is one clear error. A read that fails for a reason outside the
step (UNAVAILABLE, PERMISSION_DENIED, ...: the network or credentials) is raised, never taken
for damage. A step whose model differs from the config (another model class, other shapes) is
not damage either: the resume stops with one line naming both.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from jax.experimental import multihost_utils

from glmvoice_jax import errors
from glmvoice_jax.data import text_tokenizer as text_tokenizer_lib
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.models import glm, whisper_vq
from glmvoice_jax.models.speech_decoder import config as decoder_config

MODEL_CLASSES = {
    "GLMConfig": glm.GLMConfig,
    "WhisperVQConfig": whisper_vq.WhisperVQConfig,
    "DecoderConfig": decoder_config.DecoderConfig,
}
_KIND = {
    "GLMConfig": "the language model",
    "WhisperVQConfig": "the speech tokenizer",
    "DecoderConfig": "the speech decoder",
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


def model_config_from_meta(meta: Mapping, expect: type | None = None, what: str = "") -> Any:
    """Rebuilds the frozen model dataclass; unknown fields are an error, not ignored.

    ``expect``: the config class the caller needs; another class is one UserError naming both
    (``what`` names the checkpoint, e.g. "init_from checkpoint /x").
    """
    cls_name = meta.get("model_class")
    if expect is not None and cls_name != expect.__name__:
        raise errors.UserError(
            f"{what or 'checkpoint'} holds a {cls_name} model ({_KIND.get(cls_name, '?')}), "
            f"not a {expect.__name__} ({_KIND.get(expect.__name__, '?')}): point it at a "
            f"checkpoint of a {expect.__name__}"
        )
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

    def restore_latest(
        self,
        *,
        abstract_params: Any,
        abstract_train: Any,
        data_iter: grain.DatasetIterator | None,
        meta: Mapping | None = None,
        read_extra: Callable[[epath.Path], Any] | None = None,
        items: Sequence[str] = ("params", "train", "meta", "data"),
    ) -> tuple[int, Any, Any, dict, Any] | None:
        """Restores the newest intact step: (step, params, train, meta, extra), or None if none.

        Damaged steps (:func:`step_problem`, or a restore that fails) are skipped, newest first;
        once one restores, each damaged newer step is renamed ``<step>.damaged`` and named in
        one printed line. ``meta``: this run's :func:`model_meta`; a step of another model class
        or with other parameter shapes is a UserError naming both (not damage, no fallback).
        ``read_extra(step_dir)``: more of the step to read (the data state), inside the same
        fallback. Raises UserError when steps exist but none is intact.
        """
        steps = sorted(set(self.all_steps()), reverse=True)
        if not steps:
            return None
        damaged: list[tuple[int, str]] = []
        for step in steps:
            step_dir = self.directory / str(step)
            problem = step_problem(step_dir, items)
            out = None
            if problem is None:
                try:
                    if meta is not None:
                        check_model(step_dir, meta, abstract_params)
                    params, train, saved = self.restore(
                        step,
                        abstract_params=abstract_params,
                        abstract_train=abstract_train,
                        data_iter=data_iter,
                    )
                    extra = read_extra(step_dir) if read_extra is not None else None
                    out = (step, params, train, saved, extra)
                except (errors.UserError, MemoryError):
                    raise
                except Exception as e:  # noqa: BLE001 - a failed read is damage, unless transient
                    if _transient(e):
                        raise
                    problem = f"could not be read: {_short(e)}"
                    _quiet_late_callbacks()
            if problem is not None and problem.startswith("could not be read"):
                gc.collect()  # the failed read's leftovers report now, into the quiet hook
            if jax.process_count() > 1:  # every process takes the same step
                ok = multihost_utils.process_allgather(np.int32(out is not None))
                if out is not None and not bool(np.min(ok)):
                    out, problem = None, "could not be read on another process"
            if out is not None:
                self._set_aside(damaged, step)
                return out
            damaged.append((step, problem))
        listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
        raise errors.UserError(
            f"no intact checkpoint to resume from in {self.directory} ({listed}); move the "
            "damaged steps away to start afresh, or pass another --workdir"
        )

    def _set_aside(self, damaged: list[tuple[int, str]], resumed: int) -> None:
        """Renames damaged steps to ``<step>.damaged[.N]`` (kept for inspection), one line each."""
        if not damaged:
            return
        main = jax.process_index() == 0
        for step, why in damaged:
            src = self.directory / str(step)
            dst = self.directory / f"{step}.damaged"
            n = 0
            while dst.exists():
                n += 1
                dst = self.directory / f"{step}.damaged.{n}"
            if main:
                src.rename(dst)
                line = (
                    f"checkpoint step {step} in {self.directory} is damaged ({why}): kept as "
                    f"{dst.name}, resuming from step {resumed}"
                )
                print(line, flush=True)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("checkpoint_set_aside_damaged")
        self.manager.reload()

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


COMMIT_MARKER = "commit_success.txt"  # written by Orbax when a step (and each item) commits
_TREE_ITEMS = ("params", "train")  # StandardSave items: _METADATA + an OCDBT manifest


def step_problem(step_dir: epath.Path, items: Sequence[str] = ("params", "meta")) -> str | None:
    """Why ``step_dir`` is not a complete checkpoint with ``items``, from its files; None if it is.

    Catches an interrupted copy (empty directory, no commit marker, an item missing or empty),
    a metadata file that is missing or truncated, and a data file of a tree item that is missing
    or shorter than its B-tree says (:func:`_ocdbt_problem`, no data read). Bytes corrupted in
    place are only found by a read (:meth:`Checkpointer.restore_latest` catches that).
    """
    step_dir = epath.Path(step_dir)
    try:
        if not step_dir.is_dir():
            return "not a directory"
        names = {c.name for c in step_dir.iterdir()}
        if not names:
            return "empty directory (an interrupted save or copy)"
        if COMMIT_MARKER not in names and not _old_orbax_commit(step_dir, names):
            return f"no commit marker ({COMMIT_MARKER}): its save or copy did not finish"
        for item in items:
            d = step_dir / item
            if item not in names or not d.is_dir():
                return f"its {item}/ item is missing"
            inside = {c.name for c in d.iterdir()}
            if not inside:
                return f"its {item}/ item is empty"
            if item in _TREE_ITEMS:
                for need in ("_METADATA", "manifest.ocdbt"):
                    if need not in inside:
                        return f"{item}/{need} is missing"
                if _json_problem(d / "_METADATA"):
                    return f"{item}/_METADATA is not valid JSON (truncated?)"
                problem = _ocdbt_problem(d)
                if problem:
                    return f"{item}/{problem}"
            elif item == "meta":
                if "metadata" not in inside:
                    return "meta/metadata is missing"
                if _json_problem(d / "metadata"):
                    return "meta/metadata is not valid JSON (truncated?)"
    except OSError as e:
        return f"unreadable ({e})"
    return None


def _old_orbax_commit(step_dir: epath.Path, names: set[str]) -> bool:
    """A step written without marker files, its commit time recorded (written last).

    Steps of older Orbax versions and of the importer's stream writer before it wrote the marker
    (``convert/io/orbax_stream.py``) have none. Orbax versions that write the step marker write
    one per tree item too: a params/ item with a marker in a step without one is a step whose
    copy stopped before its last file.
    """
    if "params" in names and (step_dir / "params" / COMMIT_MARKER).exists():
        return False
    f = step_dir / "_CHECKPOINT_METADATA"
    try:
        return bool(f.exists() and json.loads(f.read_text()).get("commit_timestamp_nsecs"))
    except (OSError, ValueError, AttributeError):
        return False


def _ocdbt_problem(item_dir: epath.Path) -> str | None:
    """A truncated or missing file of an OCDBT item, found from its B-tree without reading data.

    Walks the manifest's newest version: every B-tree node and every stored value names a file,
    an offset and a length; a file shorter than offset + length (or absent) is the problem.
    Only local items are checked (None for gs:// and other URLs).
    """
    text = str(item_dir)
    if "://" in text:  # remote: a failed open may be the network, not damage; the restore judges
        return None
    spec = {"driver": "file", "path": text.rstrip("/") + "/"}
    try:
        kv = ts.KvStore.open(spec).result()
        manifest = ts.ocdbt.dump(kv).result()
    except Exception as e:  # noqa: BLE001 - any failure to decode is damage
        return f"manifest.ocdbt could not be read ({_short(e)})"
    versions = manifest.get("versions") or []
    if not versions:
        return None
    sizes: dict[str, int | None] = {}  # file (relative to the item) -> its size, None: absent
    todo = [versions[-1].get("root", {}).get("location", "")]
    seen = set()
    while todo:
        ref = todo.pop()
        if not ref or ref in seen:
            continue
        seen.add(ref)
        kind, prefix, rel, offset, length = _split_ref(ref)
        name = prefix + rel
        if name not in sizes:
            f = item_dir / name
            sizes[name] = f.stat().length if f.exists() else None
        if sizes[name] is None:
            return f"{name} is missing"
        end = int(offset) + int(length)
        if sizes[name] < end:
            return f"{name} is truncated ({sizes[name]:,} of at least {end:,} bytes)"
        if kind == "btreenode":
            try:
                node = ts.ocdbt.dump(kv, ref).result()
            except Exception as e:  # noqa: BLE001 - a node that does not decode is damage
                return f"{name} could not be read ({_short(e)})"
            todo.extend(_refs(node.get("entries", [])))
    return None


def _refs(tree: Any) -> list[str]:
    """Every "btreenode:..." / "value:..." location string in a dumped node (any nesting)."""
    if isinstance(tree, str):
        return [tree] if tree.startswith(("btreenode:", "value:")) else []
    if isinstance(tree, Mapping):
        tree = list(tree.values())
    if isinstance(tree, list):
        return [r for x in tree for r in _refs(x)]
    return []


def _split_ref(ref: str) -> tuple[str, str, str, str, str]:
    """'value:ocdbt.process_0/:d/abc:0:15211' -> (kind, prefix, path, offset, length)."""
    head, offset, length = ref.rsplit(":", 2)
    kind, prefix, rel = head.split(":", 2)
    return kind, prefix, rel, offset, length


def _json_problem(f: epath.Path) -> bool:
    try:
        json.loads(f.read_text())
    except (OSError, ValueError):
        return True
    return False


class _LateReadErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" for a failed TensorStore read."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not ("exception was never retrieved" in text and "tensorstore" in text)


def _quiet_late_callbacks() -> None:
    """Drops the late reports of a failed restore's other reads (installed once per process).

    When one TensorStore read fails, Orbax's event loop closes while the step's other reads are
    in flight: their completion callbacks hit the closed loop, their coroutines are closed
    mid-read (Python prints an "Exception ignored" traceback for each) and their failed tasks
    are logged by asyncio when collected, at any later moment. The damaged step is already named
    in one line; only these reports are dropped. The caller collects garbage right after, so
    most of them come and go while the hook is in place.
    """
    if getattr(sys.unraisablehook, "_glmvoice_quiet", False):
        return
    logging.getLogger("asyncio").addFilter(_LateReadErrors())
    previous = sys.unraisablehook

    def hook(u):
        exc = u.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        code = getattr(u.object, "cr_code", None)  # an Orbax read coroutine closed mid-read
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        previous(u)

    hook._glmvoice_quiet = True
    sys.unraisablehook = hook


_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "UNAUTHENTICATED")


def _transient(e: BaseException) -> bool:
    """A storage error that says nothing about the step (network, credentials): not damage."""
    chain = [e, e.__cause__, e.__context__]
    text = " ".join(str(x) for x in chain if x is not None)
    return isinstance(e, (ConnectionError, TimeoutError)) or any(t in text for t in _TRANSIENT)


def _short(e: BaseException, limit: int = 300) -> str:
    """One short line from a (TensorStore / Orbax) error: its innermost cause, no spec dump.

    Status codes and 'Error opening "..." driver' clauses are dropped; of the rest, the first
    (which names the array and file) and the last (what went wrong) are kept.
    """
    for _ in range(5):  # Orbax wraps the TensorStore error ("See full TensorStore details")
        inner = e.__cause__ or e.__context__
        if inner is None or not str(inner):
            break
        e = inner
    text = str(e).split(" [tensorstore_spec")[0].split(" See full TensorStore details")[0]
    text = " ".join(text.split())
    parts = [
        p
        for p in re.split(r": (?=[A-Z\"'])", text)
        if p
        and not re.fullmatch(r"[A-Z_]+", p)
        and not re.fullmatch(r'Error opening ".*" driver', p)
    ]
    text = ": ".join(parts if len(parts) <= 2 else [parts[0], parts[-1]]) or text
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_model(step_dir: epath.Path, meta: Mapping, abstract_params: Any) -> None:
    """UserError naming both sides when ``step_dir`` holds another model than ``meta`` describes.

    Compares the model class, then every parameter's shape (from Orbax's metadata) with
    ``abstract_params``; the differing model config fields are named with the shapes.
    """
    step_dir = epath.Path(step_dir)
    saved = json.loads((step_dir / "meta" / "metadata").read_text())
    where = f"checkpoint step {step_dir.name} in {step_dir.parent}"
    have, want = saved.get("model_class"), meta.get("model_class")
    if have != want:
        raise errors.UserError(
            f"{where} holds a {have} ({_KIND.get(have, '?')}) but the config builds a {want} "
            f"({_KIND.get(want, '?')}): pass another --workdir, or the config of that model"
        )
    tree = ocp.StandardCheckpointHandler().metadata(step_dir / "params").tree
    saved_shapes, want_shapes = _flat_shapes(tree), _flat_shapes(abstract_params)
    if saved_shapes == want_shapes:
        return
    diff = [
        f"{k} {saved_shapes.get(k, 'absent')} vs {want_shapes.get(k, 'absent')}"
        for k in sorted(set(saved_shapes) | set(want_shapes))
        if saved_shapes.get(k) != want_shapes.get(k)
    ]
    fields = [
        f"{f} {a} vs {meta['model'].get(f)}"
        for f, a in sorted(saved.get("model", {}).items())
        if f in meta.get("model", {}) and a != meta["model"][f] and not isinstance(a, dict)
    ]
    more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
    raise errors.UserError(
        f"{where} has another model shape than the config (checkpoint vs config): "
        + (f"{', '.join(fields)}; " if fields else "")
        + f"{'; '.join(diff[:3])}{more}. Resume with the checkpoint's model.* values, or pass "
        "another --workdir"
    )


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'layers/0/attn/kernel' -> shape; int and str keys alike (Orbax metadata has str keys)."""

    def name(k):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return {
        "/".join(name(k) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


_SKIPPED: set[str] = set()  # damaged steps already named by resolve() in this process


def resolve(path: str) -> tuple[epath.Path, int]:
    """CKPT argument -> (manager root, step). Accepts a manager root or one step directory.

    A root's damaged steps (:func:`step_problem`) are skipped, each named once in a printed line;
    a damaged step directory given as such is a UserError naming the problem.

    Raises:
      FileNotFoundError: naming the path when it holds no complete checkpoint.
    """
    p = _absolute(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if (p / "meta").exists() and (p / "params").exists() and p.name.isdigit():
        problem = step_problem(p)
        if problem:
            raise errors.UserError(f"checkpoint {path} is damaged: {problem}")
        return p.parent, int(p.name)
    if (p / "checkpoints").is_dir() and not any(c.name.isdigit() for c in p.iterdir()):
        p = p / "checkpoints"  # a training workdir
    steps = sorted((int(c.name) for c in p.iterdir() if c.name.isdigit()), reverse=True)
    damaged = []
    for step in steps:
        problem = step_problem(p / str(step))
        if problem is None:
            for s, why in damaged:
                key = str(p / str(s))
                if key not in _SKIPPED:
                    _SKIPPED.add(key)
                    print(
                        f"checkpoint step {s} in {p} is damaged ({why}): using step {step}",
                        file=sys.stderr,
                        flush=True,
                    )
            return p, step
        damaged.append((step, problem))
    if damaged:
        listed = "; ".join(f"step {s}: {why}" for s, why in damaged)
        raise FileNotFoundError(f"no intact checkpoint under {path} ({listed})")
    raise FileNotFoundError(
        f"no complete checkpoint under {path}: expected a step directory with params/ and "
        "meta/, or a directory of such steps (e.g. WORKDIR/checkpoints)"
    )


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
