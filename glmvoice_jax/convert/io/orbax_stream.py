"""Slice-by-slice writing and reading of the ``params`` item of an Orbax checkpoint step.

Why not ``checkpoint.write_weights``: Orbax saves a tree of arrays that already exist in memory.
A 9B checkpoint imported on one host would then need all 19 GB (on CPU "devices" that is host
RAM), and even one stacked leaf (e.g. ``layers.mlp.gate.kernel``, 40 x 4096 x 13696 bf16 =
4.5 GB) is larger than any tensor of the source checkpoint. This writer instead opens every leaf
as a TensorStore array with the exact spec Orbax itself uses for an OCDBT + zarr checkpoint
(``ocp.type_handlers.get_json_tspec_write``), writes it one slice at a time (one layer, or one
block of embedding rows), merges the per-process OCDBT store like Orbax does, and writes the
same ``_METADATA`` tree file, ``meta`` item and step ``_CHECKPOINT_METADATA``. The result is
read by ``checkpoint.restore_params`` / ``read_meta`` like any checkpoint Orbax wrote, onto any
mesh (tests check this). Chunks follow the target sharding (one chunk per device shard, one
layer deep), so a restore reads whole chunks per device.

The writer runs in one process: importing is a one-off conversion, not a multi-host job.
``ParamsReader`` is the inverse used by export: it reads one slice of one leaf at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from glmvoice_jax import errors

_MAX_PENDING_WRITES = 2  # overlap reading the next tensor with writing this one


def flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf} (Orbax's parameter names)."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for name, v in flat.items():
        node = out
        *parents, last = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return out


def _tree_metadata(leaves: Mapping[str, jax.ShapeDtypeStruct]) -> dict:
    """The ``_METADATA`` file Orbax's PyTreeCheckpointHandler writes for a dict of jax.Arrays."""
    tree = {}
    for name, leaf in leaves.items():
        keys = name.split(".")
        tree[str(tuple(keys))] = {
            "key_metadata": [{"key": k, "key_type": 2} for k in keys],  # 2 = dict key
            "value_metadata": {
                "value_type": "jax.Array",
                "skip_deserialize": False,
                "write_shape": list(leaf.shape),
            },
        }
    return {
        "tree_metadata": tree,
        "use_ocdbt": True,
        "use_zarr3": False,
        "store_array_data_equal_to_fill_value": True,
        "custom_metadata": None,
    }


def _handler_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class ParamsWriter:
    """Writes the ``params`` and ``meta`` items of one checkpoint step, slice by slice.

    Args:
      step_dir: the step directory to create (e.g. ``<tmp root>/0``); must not exist.
      abstract: nested dict of ShapeDtypeStruct (shape and stored dtype of every leaf).
      chunk_shapes: leaf name -> zarr chunk shape (every write should cover whole chunks).
    """

    def __init__(
        self,
        step_dir: str,
        abstract: Mapping,
        chunk_shapes: Mapping[str, tuple[int, ...]],
    ):
        self.step_dir = epath.Path(step_dir)
        if self.step_dir.exists():
            raise FileExistsError(f"{self.step_dir} already exists")
        self.params_dir = self.step_dir / "params"
        self.params_dir.mkdir(parents=True)
        self.leaves = flatten(abstract)
        self.ctx = ocp.type_handlers.get_ts_context(use_ocdbt=True)
        self._written = dict.fromkeys(self.leaves, 0)
        self._pending: collections.deque = collections.deque()
        self._stores = {}
        opens = []
        for name, leaf in self.leaves.items():
            info = ocp.type_handlers.ParamInfo(
                name=name,
                parent_dir=self.params_dir,
                is_ocdbt_checkpoint=True,
                use_zarr3=False,
                ts_context=self.ctx,
            )
            spec = ocp.type_handlers.get_json_tspec_write(
                info,
                use_ocdbt=True,
                global_shape=tuple(leaf.shape),
                local_shape=tuple(chunk_shapes[name]),
                dtype=np.dtype(leaf.dtype),
                process_index=0,
            )
            # dtype passed explicitly: newer Orbax versions leave it out of the write spec.
            dtype = ts.dtype(np.dtype(leaf.dtype).name)
            opens.append(
                (name, ts.open(spec, create=True, open=True, context=self.ctx, dtype=dtype))
            )
        for name, fut in opens:
            self._stores[name] = fut.result()

    def write(self, name: str, value: np.ndarray, index: tuple = ()) -> None:
        """Writes ``value`` into ``leaf[index]`` (cast to the leaf dtype; shapes must match).

        Raises:
          KeyError / ValueError: unknown leaf, or value shape != the indexed region's shape.
        """
        if name not in self._stores:
            raise errors.MissingError(f"no parameter {name}; parameters: {sorted(self.leaves)}")
        store = self._stores[name][index] if index else self._stores[name]
        region = tuple(store.shape)
        if tuple(value.shape) != region:
            raise ValueError(
                f"parameter {name}{list(index) if index else ''}: got shape "
                f"{list(value.shape)}, expected {list(region)}"
            )
        value = np.ascontiguousarray(value.astype(self.leaves[name].dtype, copy=False))
        while len(self._pending) >= _MAX_PENDING_WRITES:
            self._pending.popleft().result()
        self._pending.append(store.write(value))
        self._written[name] += value.size

    def flush(self) -> None:
        """Waits until every write so far is done."""
        while self._pending:
            self._pending.popleft().result()

    def abort(self) -> None:
        """Waits for writes in flight (ignoring their errors) so the directory can be removed."""
        while self._pending:
            with contextlib.suppress(Exception):  # the import is being abandoned anyway
                self._pending.popleft().result()
        self._stores.clear()

    def finish(self, meta: Mapping) -> None:
        """Waits for the writes, checks every leaf is complete, writes the metadata files.

        Raises:
          ValueError: naming each parameter that was not completely written.
        """
        self.flush()
        missing = [
            f"{n} ({w} of {math.prod(self.leaves[n].shape)} values)"
            for n, w in self._written.items()
            if w != math.prod(self.leaves[n].shape)
        ]
        if missing:
            raise ValueError(f"parameters not completely written: {', '.join(missing)}")
        self._stores.clear()
        asyncio.run(
            ocp.type_handlers.merge_ocdbt_per_process_files(
                self.params_dir, ts_context=self.ctx, use_zarr3=False
            )
        )
        (self.params_dir / "_METADATA").write_text(json.dumps(_tree_metadata(self.leaves)))
        ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(
            self.step_dir / "meta", args=ocp.args.JsonSave(dict(meta))
        )
        now = time.time_ns()
        step_meta = {
            "item_handlers": {
                "meta": _handler_name(ocp.JsonCheckpointHandler),
                "params": _handler_name(ocp.StandardCheckpointHandler),
            },
            "metrics": {},
            "performance_metrics": {},
            "init_timestamp_nsecs": now,
            "commit_timestamp_nsecs": now,
            "custom_metadata": {},
        }
        (self.step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps(step_meta))
        # Orbax's commit marker, last: a copy of the step that stops early has none.
        (self.step_dir / "commit_success.txt").write_text(
            f"Checkpoint commit was successful to {self.step_dir}"
        )


class ParamsReader:
    """Reads slices of the leaves of a checkpoint's ``params`` item without restoring it whole.

    Args:
      step_dir: one step directory (see ``checkpoint.resolve``).
    """

    def __init__(self, step_dir: str):
        self.params_dir = epath.Path(step_dir) / "params"
        md_file = self.params_dir / "_METADATA"
        if not md_file.exists():
            raise FileNotFoundError(f"{self.params_dir} has no _METADATA: not an Orbax params item")
        md = json.loads(md_file.read_text())
        self.use_ocdbt = bool(md.get("use_ocdbt", True))
        self.use_zarr3 = bool(md.get("use_zarr3", False))
        self.ctx = ocp.type_handlers.get_ts_context(use_ocdbt=self.use_ocdbt)
        self.names = [
            ".".join(str(k["key"]) for k in entry["key_metadata"])
            for entry in md["tree_metadata"].values()
        ]
        self._stores: dict[str, Any] = {}

    def _store(self, name: str):
        if name not in self._stores:
            if name not in self.names:
                raise errors.MissingError(f"checkpoint {self.params_dir} has no parameter {name}")
            info = ocp.type_handlers.ParamInfo(
                name=name,
                parent_dir=self.params_dir,
                is_ocdbt_checkpoint=self.use_ocdbt,
                use_zarr3=self.use_zarr3,
                ts_context=self.ctx,
            )
            spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self.use_ocdbt)
            self._stores[name] = ts.open(spec, open=True, context=self.ctx).result()
        return self._stores[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._store(name).shape)

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(self._store(name).dtype.numpy_dtype)

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        store = self._store(name)
        return np.asarray((store[index] if index else store).read().result())
