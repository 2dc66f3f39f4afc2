"""Torch-free reader for ``torch.save``'d state dicts (the zip format, torch >= 1.6).

Ref: decoder.md §11.2. A ``.pt`` file is a zip archive holding ``<name>/data.pkl`` (the pickled
object graph) and ``<name>/data/<key>`` (one raw storage blob per key, byte order given by
``<name>/byteorder``). The pickle names its storages through persistent ids
``('storage', StorageType, key, location, numel)`` and builds tensors with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

This module unpickles ``data.pkl`` with a restricted unpickler: ``find_class`` resolves only the
tensor-rebuild globals listed in ``_ALLOWED_GLOBALS`` (mapped to numpy equivalents) and refuses
everything else, so a hostile file cannot run code (``os.system``, ``builtins.eval``, ...). Each
load makes its own immutable stand-ins, so a pickle cannot poison a later load. Sizes are never
trusted: a tensor may not declare more elements than its storage, a storage more bytes than its
zip member holds (read in bounded chunks, never inflated whole), and the whole file no more than
``max_expansion`` times its size on disk. No torch import is needed or attempted. The legacy
pre-1.6 (non-zip) format is not supported.
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


class _Frozen:
    """Base of the per-load stand-ins: no ``__dict__``, no attribute can be set.

    A pickle's BUILD opcode updates ``__dict__`` or calls ``setattr``; both fail here, so nothing
    a hostile pickle does to a stand-in survives (and each load makes its own stand-ins anyway).
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to set {name!r} on a tensor-rebuild stand-in")

    def __delattr__(self, name: str) -> None:
        raise pickle.UnpicklingError(f"refusing to delete {name!r} on a tensor-rebuild stand-in")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("refusing a pickle that sets state on a tensor-rebuild global")


class _StorageType(_Frozen):
    """Stand-in for a torch ``<Name>Storage`` class: only carries the element dtype."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

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
    numel = int(np.prod(size, dtype=object))
    if numel > storage.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size} (stride {stride}) declares {numel} elements over a storage "
            f"of only {storage.size}; broadcast (stride-0) tensors are refused (re-save the "
            "tensor with .contiguous())"
        )
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


class _Rebuild(_Frozen):
    """Per-load, immutable callable standing in for a torch rebuild function."""

    __slots__ = ("_fn", "_on_tensor")

    def __init__(self, fn: Any, on_tensor: Any):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_on_tensor", on_tensor)

    def __call__(self, *args: Any) -> Any:
        out = self._fn(*args)
        self._on_tensor(out)
        return out


_REBUILDS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}
# Allowed globals, for documentation and tests; each load builds its own stand-ins for them.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("collections", "OrderedDict"), *_REBUILDS, *(("torch", n) for n in _STORAGE_DTYPES)}
)
# Bytes a file may declare (storages read plus tensors built), as a multiple of its size on
# disk, plus a fixed slack for tiny files. torch.save stores members uncompressed, so a genuine
# state dict declares about 1x (2x with tied views); more means a crafted or compressed file.
DEFAULT_MAX_EXPANSION = 4.0
_SLACK_BYTES = 1 << 20
_CHUNK = 1 << 22


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only tensor-rebuild globals and reads storages from the zip."""

    def __init__(
        self,
        data: bytes,
        archive: zipfile.ZipFile,
        prefix: str,
        path: str,
        order: str,
        budget: int,
    ):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._path = path
        self._order = order
        self._storages: dict[str, np.ndarray] = {}
        self._budget = budget
        self._declared = 0
        # Fresh stand-ins for this load only: nothing from an earlier file can reach them.
        self._globals: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            **{k: _Rebuild(fn, self._count_tensor) for k, fn in _REBUILDS.items()},
            **{("torch", n): _StorageType(n) for n in _STORAGE_DTYPES},
        }

    def _charge(self, nbytes: int, what: str) -> None:
        self._declared += nbytes
        if self._declared > self._budget:
            raise ValueError(
                f"{self._path} declares {self._declared:,} bytes ({what}) but is only "
                f"{os.path.getsize(self._path):,} bytes on disk; refusing it (limit "
                f"{self._budget:,} bytes = max_expansion x file size). Raise max_expansion "
                "only for a file you trust"
            )

    def _count_tensor(self, out: Any) -> None:
        if isinstance(out, np.ndarray):
            self._charge(out.nbytes, f"tensor of shape {out.shape}")

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._globals[(module, name)]
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
                info = self._archive.getinfo(member)
            except KeyError:
                raise ValueError(
                    f"{self._path} is incomplete: storage {member!r} is missing"
                ) from None
            dtype = storage_type.dtype.newbyteorder("<" if self._order == "little" else ">")
            if not isinstance(numel, int) or numel < 0:
                raise pickle.UnpicklingError(f"storage {key!r} in {self._path}: numel {numel!r}")
            need = numel * dtype.itemsize
            if info.file_size < need:
                raise ValueError(
                    f"{self._path} is truncated: storage {member!r} has {info.file_size} bytes, "
                    f"{need} expected ({numel} x {storage_type.dtype})"
                )
            self._charge(need, f"storage {member!r}")
            raw = self._read_bounded(member, need)
            arr = np.frombuffer(raw, dtype=dtype)
            self._storages[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
        return self._storages[key]

    def _read_bounded(self, member: str, need: int) -> bytearray:
        """Reads exactly ``need`` bytes of a member in chunks (never inflates it whole)."""
        buf = bytearray()
        with self._archive.open(member) as f:
            while len(buf) < need:
                chunk = f.read(min(_CHUNK, need - len(buf)))
                if not chunk:
                    raise ValueError(
                        f"{self._path} is truncated: storage {member!r} has {len(buf)} bytes, "
                        f"{need} expected"
                    )
                buf += chunk
        return buf


def load_state_dict(
    path: str | os.PathLike, max_expansion: float = DEFAULT_MAX_EXPANSION
) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``'d state dict without torch.

    Args:
      path: a ``.pt`` / ``.pth`` / ``.bin`` file in torch's zip format.
      max_expansion: the bytes the file may declare (storages read plus tensors built) as a
        multiple of its size on disk (plus 1 MiB); a file declaring more is refused before the
        memory is taken.

    Returns:
      ``{name: array}`` in file order, each array a fresh C-contiguous copy that honours the
      tensor's storage offset, sizes, strides and dtype.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: the file is not a torch zip archive (legacy format, truncated, corrupt),
        does not hold a flat ``{str: tensor}`` dict, or declares more bytes than allowed.
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
            pkl = archive.getinfo(pickles[0])
            if pkl.file_size > max_expansion * os.path.getsize(path) + _SLACK_BYTES:
                raise ValueError(f"{path}: data.pkl declares {pkl.file_size:,} bytes; refusing it")
            data = archive.read(pickles[0])
            budget = int(max_expansion * os.path.getsize(path)) + _SLACK_BYTES
            obj = _RestrictedUnpickler(data, archive, prefix, path, order, budget).load()
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
