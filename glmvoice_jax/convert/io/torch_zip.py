"""Torch-free reader for ``torch.save``'d state dicts (the zip format, torch >= 1.6).

Ref: decoder.md §11.2. A ``.pt`` file is a zip archive holding ``<name>/data.pkl`` (the pickled
object graph) and ``<name>/data/<key>`` (one raw storage blob per key, byte order given by
``<name>/byteorder``). The pickle names its storages through persistent ids
``('storage', StorageType, key, location, numel)`` and builds tensors with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

This module unpickles ``data.pkl`` with a restricted unpickler: ``find_class`` resolves only the
tensor-rebuild globals listed in ``_ALLOWED_GLOBALS`` (mapped to numpy equivalents) and refuses
everything else, so a hostile file cannot run code (``os.system``, ``builtins.eval``, ...). No
torch import is needed or attempted. The legacy pre-1.6 (non-zip) format is not supported.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# Storage class name -> numpy dtype name (torch.<Name>Storage). bfloat16 comes from ml_dtypes
# (a jax dependency), imported lazily.
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _StorageType:
    """Stand-in for a torch ``<Name>Storage`` class: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name

    @property
    def dtype(self) -> np.dtype:
        dtype_name = _STORAGE_DTYPES[self.name]
        if dtype_name == "bfloat16":
            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(dtype_name)


def _rebuild_tensor_v2(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """Numpy twin of ``torch._utils._rebuild_tensor_v2``: a strided view, copied out."""
    del requires_grad, backward_hooks, metadata
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in rank")
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or storage_offset < 0:
        raise pickle.UnpicklingError(
            f"negative size {size}, stride {stride} or offset {storage_offset}"
        )
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor (offset {storage_offset}, size {size}, stride {stride}) reads element "
            f"{last} of a storage with only {storage.size} elements (truncated file?)"
        )
    base = storage[storage_offset:]
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_tensor(
    storage: np.ndarray, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> np.ndarray:
    """Numpy twin of the older ``torch._utils._rebuild_tensor``."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: np.ndarray, requires_grad: bool, backward_hooks: Any) -> np.ndarray:
    """``nn.Parameter`` → its data."""
    del requires_grad, backward_hooks
    return data


def _rebuild_parameter_with_state(
    data: np.ndarray, requires_grad: bool, backward_hooks: Any, state: Any
) -> np.ndarray:
    """``nn.Parameter`` with extra python state → its data (the state is dropped)."""
    del requires_grad, backward_hooks, state
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-rebuild globals and reads storages from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: str, order: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._order = order
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from {self._path}: not a tensor-rebuild "
                "global (only state dicts of tensors can be read without torch)"
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(
                f"unsupported persistent id {pid!r} in {self._path}: expected "
                "('storage', StorageType, key, location, numel)"
            )
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"storage {key!r} in {self._path} has type {storage_type!r}, not a torch "
                f"<Name>Storage; supported: {', '.join(_STORAGE_DTYPES)}"
            )
        key = str(key)
        if key not in self._storages:
            member = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(member)
            except KeyError:
                raise ValueError(
                    f"{self._path} is incomplete: storage {member!r} is missing"
                ) from None
            dtype = storage_type.dtype.newbyteorder("<" if self._order == "little" else ">")
            need = int(numel) * dtype.itemsize
            if len(raw) < need:
                raise ValueError(
                    f"{self._path} is truncated: storage {member!r} has {len(raw)} bytes, "
                    f"{need} expected ({numel} x {storage_type.dtype})"
                )
            arr = np.frombuffer(raw[:need], dtype=dtype)
            self._storages[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        return self._storages[key]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``'d state dict without torch.

    Args:
      path: a ``.pt`` / ``.pth`` / ``.bin`` file in torch's zip format.

    Returns:
      ``{name: array}`` in file order, each array a fresh C-contiguous copy that honours the
      tensor's storage offset, sizes, strides and dtype.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a torch zip archive (legacy format, truncated, corrupt) or
        does not hold a flat ``{str: tensor}`` dict.
      pickle.UnpicklingError: the pickle names a global outside the tensor-rebuild allowlist.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not a torch zip archive (truncated or corrupt file, or the legacy "
            "pre-1.6 torch.save format, which this torch-free reader does not support; "
            "re-save it once with torch>=1.6)"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            pickles = [n for n in pickles if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError(
                    f"{path}: expected exactly one '<name>/data.pkl' in the archive, found "
                    f"{pickles or 'none'}"
                )
            prefix = pickles[0][: -len("data.pkl")]
            order = "little"
            if f"{prefix}byteorder" in archive.namelist():
                order = archive.read(f"{prefix}byteorder").decode().strip()
                if order not in ("little", "big"):
                    raise ValueError(f"{path}: unknown byteorder {order!r}")
            data = archive.read(pickles[0])
            obj = _RestrictedUnpickler(data, archive, prefix, path, order).load()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is a corrupt or truncated zip archive: {e}") from e
    except EOFError as e:
        raise ValueError(f"{path}: data.pkl ends early (truncated file): {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; only flat "
                "{name: tensor} state dicts are supported"
            )
        out[key] = value
    return out
