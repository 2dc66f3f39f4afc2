"""Hugging Face checkpoint directories of safetensors files: lazy reading and streaming writing.

A directory holds ``config.json`` and either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` (``{"metadata": {"total_size": N}, "weight_map": {name: file}}``).
Reading is lazy: a tensor (or a block of its rows) is read from its file only when asked for, so
importers hold one tensor at a time. Writing streams too: ``ShardedWriter`` appends tensors to the
current shard file as they come and starts a new shard at ``max_shard_bytes``.

Files are parsed as data only (JSON headers, raw little-endian bytes); nothing is evaluated.
Every file's header is checked before the library reads it (:func:`check_file`): a header length
past the end of the file or over the library's limit, data offsets past the end of the data,
a byte range that does not fit its dtype and shape, and ranges that overlap are refused naming
the file (and the tensor). Read tensors that hold NaN or inf are refused naming the tensor, the
file and the count (:func:`refuse_nonfinite`), unless an import allows them
(:func:`allow_nonfinite`, ``glmvoice-import --allow_nonfinite``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors can return it)
import numpy as np
from safetensors import SafetensorError, safe_open

from glmvoice_jax import errors

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size "5GB"

# safetensors dtype tag <-> numpy dtype.
ST_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NP_TO_ST = {v: k for k, v in ST_DTYPES.items()}
# config.json torch_dtype -> numpy dtype name.
TORCH_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


# Bytes per element of every safetensors dtype tag (for the header check; F8/F4 included).
_TAG_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
    "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def check_file(path: str) -> None:
    """Refuses a file whose header the library would reject, naming the file and the tensor.

    Reads only the 8-byte length and the JSON header: a length past the end of the file or over
    :data:`MAX_HEADER_BYTES`, a header that is not a JSON object of tensors, a tensor whose
    ``data_offsets`` run past the end of the data or do not hold dtype x shape bytes, and two
    tensors whose byte ranges overlap.
    """
    size = os.path.getsize(path)
    if size < 8:
        raise errors.UserError(f"{path} is not a safetensors file: {size} bytes, no header")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES:
            raise errors.UserError(
                f"{path}: safetensors header length {n:,} bytes exceeds the "
                f"{MAX_HEADER_BYTES:,}-byte limit; the file is corrupt or not safetensors"
            )
        if n > size - 8:
            raise errors.UserError(
                f"{path}: safetensors header length {n:,} bytes runs past the end of the file "
                f"({size:,} bytes); the file is truncated or not safetensors"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise errors.UserError(f"{path}: safetensors header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise errors.UserError(f"{path}: safetensors header is not a JSON object")
    data = size - 8 - n
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name} in {path}"
        try:
            tag, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = all(isinstance(v, int) and v >= 0 for v in (*shape, begin, end))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise errors.UserError(
                f"{where}: header entry {json.dumps(entry)[:120]} is not "
                '{"dtype", "shape": [non-negative ints], "data_offsets": [begin, end]}'
            )
        if end < begin or end > data:
            raise errors.UserError(
                f"{where}: data_offsets [{begin:,}, {end:,}] run past the end of the data "
                f"({data:,} bytes after the header); the file is truncated or corrupt"
            )
        if tag in _TAG_BYTES and end - begin != math.prod(shape) * _TAG_BYTES[tag]:
            raise errors.UserError(
                f"{where}: data_offsets [{begin:,}, {end:,}] hold {end - begin:,} bytes, but "
                f"{tag} of shape {list(shape)} needs {math.prod(shape) * _TAG_BYTES[tag]:,}"
            )
        ranges.append((begin, end, name))
    ranges.sort()
    for (b0, e0, a), (b1, e1, b) in zip(ranges, ranges[1:]):
        if b1 < e0:
            raise errors.UserError(
                f"{path}: tensors {a} (bytes [{b0:,}, {e0:,})) and {b} (bytes [{b1:,}, {e1:,})) "
                "overlap; the file is corrupt"
            )


@contextlib.contextmanager
def _named(path: str):
    """The library's remaining errors as one UserError naming the file."""
    try:
        yield
    except SafetensorError as e:
        raise errors.UserError(f"{path}: not a valid safetensors file ({e})") from e


_ALLOW_NONFINITE: list[bool] = [False]


@contextlib.contextmanager
def allow_nonfinite(allow: bool = True):
    """Within: :func:`refuse_nonfinite` lets NaN / inf values through (an explicit import flag)."""
    before = _ALLOW_NONFINITE[0]
    _ALLOW_NONFINITE[0] = allow
    try:
        yield
    finally:
        _ALLOW_NONFINITE[0] = before


def refuse_nonfinite(name: str, array: np.ndarray, path: str) -> None:
    """UserError naming the tensor, file and count when a float ``array`` holds NaN or inf.

    Checked in blocks of 16M values (a bfloat16 block is widened to float32 one at a time).
    """
    floating = np.issubdtype(array.dtype, np.floating) or array.dtype == ml_dtypes.bfloat16
    if _ALLOW_NONFINITE[0] or not floating or array.size == 0:
        return
    flat = array.reshape(-1)
    nan = inf = 0
    for b0 in range(0, flat.size, 1 << 24):
        block = flat[b0 : b0 + (1 << 24)]
        if block.dtype == ml_dtypes.bfloat16:
            block = block.astype(np.float32)
        bad = ~np.isfinite(block)
        if bad.any():
            n = int(np.isnan(block).sum())
            nan, inf = nan + n, inf + int(bad.sum()) - n
    if nan or inf:
        raise errors.UserError(
            f"tensor {name} in {path} holds {nan:,} NaN and {inf:,} inf of {flat.size:,} "
            "values; the weights are corrupt (pass --allow_nonfinite to import them anyway)"
        )


def st_dtype(dtype: np.dtype) -> str:
    """The safetensors tag ("BF16", "F32", ...) of a numpy dtype."""
    dtype = np.dtype(dtype)
    if dtype not in _NP_TO_ST:
        raise ValueError(f"dtype {dtype} has no safetensors equivalent")
    return _NP_TO_ST[dtype]


def read_json(path: str) -> dict:
    """Reads a JSON object file; errors name the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


class SafetensorsDir:
    """Lazy, read-only view of the tensors of one checkpoint directory.

    Args:
      directory: holds ``model.safetensors`` or ``model.safetensors.index.json`` + shards.

    Raises:
      FileNotFoundError: no weights file, or a shard named by the index is missing (named).
    """

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, INDEX_FILE)
        single = os.path.join(directory, SINGLE_FILE)
        if os.path.exists(index):
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index} has no 'weight_map' object of tensor name -> file")
            files = sorted(set(weight_map.values()))
            for name in files:
                if os.path.basename(name) != name:
                    raise ValueError(
                        f"{index} names shard {name!r}, which is not a plain file name"
                    )
                if not os.path.exists(os.path.join(directory, name)):
                    raise FileNotFoundError(
                        f"shard file {os.path.join(directory, name)} listed in {index} is missing"
                    )
        elif os.path.exists(single):
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(
                f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}; expected a Hugging Face "
                "checkpoint directory of safetensors weights"
            )
        # name -> (file, shape, dtype tag). Files are opened (memory-mapped) only while one read
        # runs: a handle kept open would keep every page read so far resident in this process.
        self._info: dict[str, tuple[str, tuple[int, ...], str]] = {}
        for fname in files:
            path = os.path.join(directory, fname)
            check_file(path)
            with _named(path), safe_open(path, framework="numpy") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                    if key in self._info:
                        raise ValueError(
                            f"tensor {key} appears in both {self._info[key][0]} and {fname} in "
                            f"{directory}"
                        )
                    sl = handle.get_slice(key)
                    shape = tuple(int(d) for d in sl.get_shape())
                    self._info[key] = (fname, shape, sl.get_dtype())

    def keys(self) -> list[str]:
        return list(self._info)

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def _get(self, name: str) -> tuple[str, tuple[int, ...], str]:
        if name not in self._info:
            raise errors.MissingError(f"tensor {name} is not in {self.directory}")
        return self._info[name]

    def file_of(self, name: str) -> str:
        return os.path.join(self.directory, self._get(name)[0])

    def shape(self, name: str) -> tuple[int, ...]:
        return self._get(name)[1]

    def dtype(self, name: str) -> np.dtype:
        tag = self._get(name)[2]
        if tag not in ST_DTYPES:
            raise ValueError(f"tensor {name} in {self.file_of(name)} has unsupported dtype {tag}")
        return ST_DTYPES[tag]

    def read(self, name: str, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The tensor, or only rows [start, end) of its first axis (read from disk lazily).

        Raises:
          UserError: the values hold NaN or inf (:func:`refuse_nonfinite`), naming tensor and file.
        """
        dtype = self.dtype(name)
        path = self.file_of(name)
        with _named(path), safe_open(path, framework="numpy") as handle:
            sl = handle.get_slice(name)
            out = sl[:] if rows is None else sl[rows[0] : rows[1]]
            out = np.array(out, dtype=dtype, copy=True)  # owns its memory, not the mapping
        refuse_nonfinite(name, out, path)
        return out

    def check(self, name: str, shape: tuple[int, ...], dtype: np.dtype | None) -> None:
        """Raises a clear error unless tensor ``name`` exists with this shape (and dtype)."""
        if name not in self._info:
            raise errors.MissingError(
                f"tensor {name} (expected shape {list(shape)}) is missing from {self.directory}"
            )
        got = self.shape(name)
        if got != tuple(shape):
            raise ValueError(
                f"tensor {name} in {self.file_of(name)} has shape {list(got)}, expected "
                f"{list(shape)} from config.json"
            )
        if dtype is not None and self.dtype(name) != np.dtype(dtype):
            raise ValueError(
                f"tensor {name} in {self.file_of(name)} has dtype {self.dtype(name)}, expected "
                f"{np.dtype(dtype)} (config.json torch_dtype / the other tensors)"
            )


class ShardedWriter:
    """Streams tensors into ``model-0000i-of-0000n.safetensors`` shards plus an index.

    Tensors are appended in order; a new shard starts when the current one would pass
    ``max_shard_bytes``. Each tensor is written as soon as it is added (only its header entry is
    kept), and shards are renamed to their final ``-of-N`` names in ``close()``. A directory whose
    tensors fit in one shard gets a single ``model.safetensors`` and no index, as transformers does.
    """

    def __init__(self, directory: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors export needs a little-endian host")
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self._shards: list[tuple[str, dict]] = []  # (temp data file, header)
        self._fh = None
        self._offset = 0
        self._total = 0

    def _new_shard(self) -> None:
        if self._fh is not None:
            self._fh.close()
        path = os.path.join(self.directory, f".shard{len(self._shards)}.data")
        self._fh = open(path, "wb")  # noqa: SIM115 (closed in _new_shard / close)
        self._shards.append((path, {}))
        self._offset = 0

    def add(self, name: str, array: np.ndarray) -> None:
        """Appends one tensor."""
        self.add_blocks(name, array.shape, array.dtype, [array])

    def add_blocks(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, blocks: Iterable[np.ndarray]
    ) -> None:
        """Appends one tensor given as consecutive blocks along its first axis (streamed)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if self._fh is None or (self._offset and self._offset + nbytes > self.max_shard_bytes):
            self._new_shard()
        if any(name in h for _, h in self._shards):
            raise ValueError(f"tensor {name} written twice")
        written = 0
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            self._fh.write(block.reshape(-1).view(np.uint8))  # little-endian host (x86, arm)
            written += block.nbytes
        if written != nbytes:
            raise ValueError(f"tensor {name}: blocks hold {written} bytes, shape needs {nbytes}")
        self._shards[-1][1][name] = {
            "dtype": st_dtype(dtype),
            "shape": [int(d) for d in shape],
            "data_offsets": [self._offset, self._offset + nbytes],
        }
        self._offset += nbytes
        self._total += nbytes

    def close(self, metadata: Mapping[str, str] | None = None) -> list[str]:
        """Writes the final shard files (header + data) and the index; returns the file names."""
        if self._fh is not None:
            self._fh.close()
        n = len(self._shards)
        names = (
            [SINGLE_FILE]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        weight_map = {}
        for (data_path, header), fname in zip(self._shards, names, strict=True):
            full = dict(header)
            full["__metadata__"] = dict(metadata or {"format": "pt"})
            blob = json.dumps(full, separators=(",", ":")).encode("utf-8")
            blob += b" " * (-len(blob) % 8)  # 8-byte aligned data start
            with open(os.path.join(self.directory, fname), "wb") as out:
                out.write(struct.pack("<Q", len(blob)))
                out.write(blob)
                with open(data_path, "rb") as src:
                    for chunk in iter(lambda src=src: src.read(64 << 20), b""):
                        out.write(chunk)
            os.remove(data_path)
            weight_map.update(dict.fromkeys(header, fname))
        if n > 1:
            index = {"metadata": {"total_size": self._total}, "weight_map": weight_map}
            with open(os.path.join(self.directory, INDEX_FILE), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2, sort_keys=True)
                f.write("\n")
        return names


def iter_tensors(directory: str) -> Iterator[tuple[str, np.ndarray]]:
    """All (name, array) pairs of a directory, one at a time (tests and small tools)."""
    st = SafetensorsDir(directory)
    for name in st.keys():  # noqa: SIM118 (not a dict)
        yield name, st.read(name)
