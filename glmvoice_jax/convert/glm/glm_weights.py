"""Streaming import / export of GLM-4 decoder weights between HF safetensors and Orbax.

The two external layouts (chatglm.py, hf_glm.py) are each one explicit rename table of
``Entry`` rows: an HF tensor name (``{i}`` = layer index), its shape, and the ``Part``s it splits
into, each a row range of the HF tensor that becomes one leaf of the project tree
(glm4voice.md §4.6). Every conversion is "take rows [a, b), transpose if it is a Linear weight,
reshape to the leaf": HF Linear weights are [out, in], project kernels are [in, ...out dims].

Import streams: a tensor is read when it is converted and written straight into the Orbax
checkpoint (orbax_stream.ParamsWriter); 2-D leaves (embedding, head, MLP) go in blocks of rows, so
host memory stays at about one block plus one attention tensor whatever the model size. The
checkpoint is assembled in a hidden temporary directory next to --output and renamed at the end, so
an interrupted import never leaves anything that looks complete. Export reads slices back
(orbax_stream.ParamsReader) and streams them into safetensors shards.

Axes: D embed, F mlp, N query heads, K kv heads, H head dim, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from glmvoice_jax import checkpoint, errors, sharding
from glmvoice_jax import files as files_lib
from glmvoice_jax import progress as progress_lib
from glmvoice_jax.convert.glm import hf_tokens, speech_vocab
from glmvoice_jax.convert.io import orbax_stream, safetensors_dir
from glmvoice_jax.data import text_tokenizer
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.models import glm

BLOCK_BYTES = 64 << 20  # rows of 2-D tensors are moved in blocks of about this size
TOKENIZER_DIR = "tokenizer"  # under the checkpoint root
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenization_chatglm.py",  # copied as data for export; never imported or executed
)
GENERATION_CONFIG = "generation_config.json"


@dataclasses.dataclass(frozen=True)
class Part:
    """Rows [rows[0], rows[1]) of an HF tensor that form one project leaf (all rows if None)."""

    leaf: str
    rows: tuple[int, int] | None = None
    transpose: bool = False  # HF Linear weight [out, in] -> kernel [in, out]
    vocab: bool = False  # rows are token ids (embedding / output head)


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str  # HF tensor name; "{i}" is replaced by the layer index
    shape: tuple[int, ...]
    parts: tuple[Part, ...]

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name


def _entry_bytes(entry: Entry, cfg: glm.GLMConfig, itemsize: int) -> int:
    """Bytes of an entry's HF tensors (all layers): the unit of import / export progress."""
    return (cfg.num_layers if entry.per_layer else 1) * math.prod(entry.shape) * itemsize


@dataclasses.dataclass(frozen=True)
class Format:
    """One external layout: how to read its config and which tensors map to which leaves."""

    name: str
    architectures: tuple[str, ...]
    config_from_hf: Callable[[Mapping, str], tuple[glm.GLMConfig, str | None]]
    rename_table: Callable[[glm.GLMConfig], list[Entry]]
    hf_config: Callable[[glm.GLMConfig, str, Mapping | None], dict]
    extra_tensors: Callable[[glm.GLMConfig, str], dict[str, np.ndarray]]
    ignored: tuple[str, ...] = ()  # tensors in the source that are not imported (buffers)


# ---------------------------------------------------------------------------------------------
# config.json fields.


def hf_field(hf: Mapping, path: str, name: str) -> Any:
    """A required config.json field; the error names the file and the field."""
    if name not in hf or hf[name] is None:
        raise errors.MissingError(f"{path}: required field {name!r} is missing")
    return hf[name]


def check_fixed(hf: Mapping, path: str, fixed: Mapping[str, Any]) -> None:
    """Checks fields whose value the GLM-4 math fixes (absent = the reference default = it)."""
    for name, want in fixed.items():
        if name in hf and hf[name] != want:
            raise ValueError(
                f"{path}: {name} = {hf[name]!r} is not supported; the GLM-4 decoder needs "
                f"{name} = {want!r}"
            )


def check_architecture(hf: Mapping, path: str, fmt_name: str, known: tuple[str, ...]) -> None:
    arch = hf_field(hf, path, "architectures")
    if not isinstance(arch, list) or not set(arch) & set(known):
        raise ValueError(
            f"{path}: architectures = {arch!r} is not a {fmt_name} GLM-4 model; expected one of "
            f"{list(known)}"
        )


def torch_dtype(hf: Mapping, path: str) -> str | None:
    """config.json ``torch_dtype`` (``dtype`` in transformers >= 4.56), or None if absent."""
    field = "torch_dtype" if "torch_dtype" in hf else "dtype"
    dt = hf.get(field)
    if dt is None:
        return None
    if dt not in safetensors_dir.TORCH_DTYPES:
        raise ValueError(
            f"{path}: {field} = {dt!r} is not supported; use one of "
            f"{sorted(safetensors_dir.TORCH_DTYPES)}"
        )
    return safetensors_dir.TORCH_DTYPES[dt]


# ---------------------------------------------------------------------------------------------
# Token layout of a source checkpoint.


def source_layout(src_dir: str, vocab_size: int) -> token_layout_lib.TokenLayout:
    """The token layout of an HF checkpoint.

    From tokenizer_config.json when it lists the specials (authoritative, glm4voice.md §6), else
    the preset of a known GLM-4 vocab size, else a text-only layout.
    """
    tc_path = os.path.join(src_dir, "tokenizer_config.json")
    added = {}
    if os.path.exists(tc_path):
        decoder = safetensors_dir.read_json(tc_path).get("added_tokens_decoder") or {}
        added = {v["content"]: int(k) for k, v in decoder.items() if isinstance(v, dict)}
    audio = sorted(i for t, i in added.items() if t.startswith("<|audio_") and t[8:-2].isdigit())
    specials = tuple(
        sorted(
            ((t, i) for t, i in added.items() if not t.startswith("<|audio_")), key=lambda p: p[1]
        )
    )
    if added and all(i < vocab_size for i in added.values()):
        offset = added.get("<|audio_0|>", vocab_size)
        layout = token_layout_lib.TokenLayout(
            name="imported",
            text_vocab_size=min(i for _, i in specials) if specials else vocab_size,
            specials=specials,
            audio_offset=offset,
            num_audio_tokens=len(audio),
            vocab_size=vocab_size,
        )
        for preset in token_layout_lib.LAYOUTS.values():
            if dataclasses.replace(layout, name=preset.name) == preset:
                return preset
        return layout
    for preset in ("glm4", "glm4_voice"):
        if token_layout_lib.LAYOUTS[preset].vocab_size == vocab_size:
            return token_layout_lib.LAYOUTS[preset]
    return token_layout_lib.TokenLayout(
        name="imported",
        text_vocab_size=vocab_size,
        specials=(),
        audio_offset=vocab_size,
        num_audio_tokens=0,
        vocab_size=vocab_size,
    )


# ---------------------------------------------------------------------------------------------
# Shapes, chunks and blocks.


def abstract_params(cfg: glm.GLMConfig, mesh: jax.sharding.Mesh | None = None):
    """(nested ShapeDtypeStructs, nested NamedShardings or None) of a GLMDecoder's params."""

    def make():
        return glm.GLMDecoder(cfg, rngs=nnx.Rngs(0))

    if mesh is None:
        return nnx.to_pure_dict(nnx.state(nnx.eval_shape(make))), None
    _, abstract, shardings = sharding.param_shardings(make, mesh, "fsdp")
    return abstract, shardings


def _blocked_axis(entry: Entry, part: Part, ndim: int) -> int | None:
    """Axis of a leaf along which HF rows run, for leaves moved in blocks of rows; else None.

    Blocked are leaves where both the HF tensor and the (per-layer) leaf are 2-D.
    """
    stacked = entry.per_layer
    if len(entry.shape) != 2 or ndim - int(stacked) != 2:
        return None
    return int(stacked) + (1 if part.transpose else 0)


def _leaf_parts(table: list[Entry]) -> dict[str, tuple[Entry, Part]]:
    out = {}
    for entry in table:
        for part in entry.parts:
            out[part.leaf] = (entry, part)
    return out


def chunk_shapes(
    table: list[Entry], abstract: Mapping, shardings: Mapping | None, mesh_shape: Mapping
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Zarr chunk shape per leaf, and HF rows moved per block for blocked leaves.

    A chunk is one device shard, one layer deep, with the blocked axis cut to a block.
    """
    flat = orbax_stream.flatten(abstract)
    flat_sh = orbax_stream.flatten(shardings) if shardings is not None else {}
    parts = _leaf_parts(table)
    chunks, block_rows = {}, {}
    for name, leaf in flat.items():
        entry, part = parts[name]
        spec = flat_sh[name].spec if name in flat_sh else jax.sharding.PartitionSpec()
        chunk = list(sharding.shard_shape(leaf.shape, spec, mesh_shape))
        if entry.per_layer:
            chunk[0] = 1
        axis = _blocked_axis(entry, part, len(leaf.shape))
        if axis is not None:
            row_elems = math.prod(leaf.shape) // leaf.shape[axis]
            if entry.per_layer:
                row_elems //= leaf.shape[0]
            rows = max(1, BLOCK_BYTES // max(1, row_elems * np.dtype(leaf.dtype).itemsize))
            chunk[axis] = min(chunk[axis], rows)
            block_rows[name] = chunk[axis] * max(1, rows // chunk[axis])
        chunks[name] = tuple(chunk)
    return chunks, block_rows


# ---------------------------------------------------------------------------------------------
# Import.


def _check_source(st, table, cfg, fmt: Format, dtype: str | None) -> None:
    """Every table tensor present with its shape and dtype; no unknown tensors. Before writing."""
    expected = set()
    for entry in table:
        for i in range(cfg.num_layers) if entry.per_layer else [None]:
            name = entry.name.format(i=i)
            expected.add(name)
            st.check(name, entry.shape, dtype)
    unknown = sorted(set(st.keys()) - expected - set(fmt.ignored))
    if unknown:
        raise ValueError(
            f"{st.directory} holds tensors the {fmt.name} layout does not define: "
            f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}; is the architecture right?"
        )


def _vocab_init(st, entry, seed, stream, new_rows, block):
    stats = speech_vocab.RowStats(entry.shape[1])
    name = entry.name
    for b0 in range(0, entry.shape[0], block):
        stats.update(st.read(name, (b0, min(b0 + block, entry.shape[0]))))
    init = speech_vocab.RowInit(stats, seed, stream)
    markers, _ = new_rows
    return init, {m: init.next_rows(1)[0] for m in markers}


def _put_rows(writer, name, part, stacked_index, r0, rows):
    """Writes HF rows [r0, r0+len) of a blocked 2-D leaf (transposed for kernels)."""
    sl = slice(r0, r0 + rows.shape[0])
    if part.transpose:
        writer.write(name, rows.T, stacked_index + (slice(None), sl))
    else:
        writer.write(name, rows, stacked_index + (sl, slice(None)))


def _import_entry(st, writer, entry, cfg, flat_abs, block_rows, ext) -> None:
    for i in range(cfg.num_layers) if entry.per_layer else [None]:
        name = entry.name.format(i=i)
        stacked_index = (i,) if entry.per_layer else ()
        whole = None
        for part in entry.parts:
            leaf = flat_abs[part.leaf]
            r0, r1 = part.rows or (0, entry.shape[0])
            if part.leaf in block_rows:
                block = block_rows[part.leaf]
                init, marker_rows = (None, {})
                if part.vocab and ext is not None:
                    init, marker_rows = _vocab_init(
                        st, entry, ext["seed"], int(part.transpose), ext["rows"], block
                    )
                for b0 in range(r0, r1, block):
                    b1 = min(b0 + block, r1)
                    rows = st.read(name, (b0, b1))
                    hit = [m for m in marker_rows if b0 <= m < b1]
                    if hit:
                        rows = rows.astype(leaf.dtype)
                        for m in hit:
                            rows[m - b0] = marker_rows[m]
                    _put_rows(writer, part.leaf, part, stacked_index, b0 - r0, rows)
                if init is not None:
                    writer.flush()  # the first new rows may share a chunk with the last old ones
                    lo, hi = ext["rows"][1]
                    for b0 in range(lo, hi, block):
                        rows = init.next_rows(min(b0 + block, hi) - b0)
                        _put_rows(writer, part.leaf, part, stacked_index, b0, rows)
                continue
            if whole is None:
                whole = st.read(name)
            x = whole[r0:r1]
            if part.transpose:
                x = x.T
            shape = leaf.shape[1:] if entry.per_layer else leaf.shape
            writer.write(part.leaf, x.reshape(shape), stacked_index)


def import_glm(
    src: str,
    dst: str,
    fmt: Format,
    *,
    add_speech_tokens: int = 0,
    param_dtype: str | None = None,
    seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> dict:
    """Converts an HF GLM-4 directory to a weight-only Orbax checkpoint at ``dst`` (step 0).

    Args:
      src: HF directory (config.json + safetensors).
      dst: checkpoint root to create; must not exist.
      fmt: the source layout (chatglm.FORMAT or hf_glm.FORMAT).
      add_speech_tokens: append this many speech tokens (speech_vocab.py); 0 = none.
      param_dtype: stored dtype (float32 / bfloat16 / float16); default: the source dtype.
      seed: seed of the new-row initialisation.
      mesh: mesh whose fsdp shardings set the chunk layout (default: all devices on "fsdp").
      progress: show a progress bar (bytes of source tensors, rate, ETA) on stderr.

    Returns:
      The checkpoint meta that was written.

    Raises:
      FileExistsError / FileNotFoundError / KeyError / ValueError: naming the file, field or
      tensor at fault. Nothing is left at ``dst`` on error.
    """
    dst = os.path.abspath(dst)
    if os.path.exists(dst):
        raise FileExistsError(f"--output {dst} already exists; remove it or choose a new path")
    cfg_path = os.path.join(src, safetensors_dir.CONFIG_FILE)
    hf = safetensors_dir.read_json(cfg_path)
    cfg, src_dtype = fmt.config_from_hf(hf, cfg_path)
    st = safetensors_dir.SafetensorsDir(src)
    table = fmt.rename_table(cfg)
    if src_dtype is None:
        src_dtype = str(st.dtype(table[0].name.format(i=0)))
    _check_source(st, table, cfg, fmt, src_dtype)

    src_layout = source_layout(src, cfg.vocab_size)
    layout, ext = src_layout, None
    if add_speech_tokens:
        layout = speech_vocab.extended_layout(src_layout, add_speech_tokens)
        ext = {"seed": seed, "rows": speech_vocab.new_row_ids(src_layout, layout)}
    out_cfg = dataclasses.replace(
        cfg, vocab_size=layout.vocab_size, param_dtype=param_dtype or src_dtype
    )
    if mesh is None:
        mesh = sharding.make_mesh({"fsdp": -1})
    abstract, shardings = abstract_params(out_cfg, mesh)
    flat_abs = orbax_stream.flatten(abstract)
    if set(_leaf_parts(table)) != set(flat_abs):
        raise AssertionError(f"{fmt.name} rename table does not cover the GLMDecoder tree")
    chunks, block_rows = chunk_shapes(table, abstract, shardings, dict(mesh.shape))

    tok_meta = _tokenizer_meta(src)
    if tok_meta and tok_meta["kind"] == "tiktoken" and ext is not None:
        tok_meta["specials"] = [list(p) for p in layout.specials]  # + the audio markers
    meta = checkpoint.model_meta(
        out_cfg,
        layout,
        tokenizer=tok_meta,
        extra={
            "source": {
                "format": fmt.name,
                "path": os.path.abspath(src),
                "dtype": src_dtype,
                "hf_config": hf,
                "generation_config": _maybe_json(os.path.join(src, GENERATION_CONFIG)),
            },
            "speech_extension": None
            if ext is None
            else {
                "num_audio_tokens": add_speech_tokens,
                "seed": seed,
                "from_layout": src_layout.name,
                "rule": "mean + 0.1 * std * N(0,1) (glm4voice.md §12 #11)",
            },
        },
    )
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.importing-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = None
    try:
        writer = orbax_stream.ParamsWriter(os.path.join(tmp, "0"), abstract, chunks)
        itemsize = np.dtype(jax.numpy.dtype(src_dtype)).itemsize
        total = sum(_entry_bytes(e, cfg, itemsize) for e in table)
        name = f"import {os.path.basename(os.path.abspath(src))}"
        with progress_lib.bar(total, name, "B", unit_scale=True, enabled=progress) as bar:
            for entry in table:
                _import_entry(st, writer, entry, cfg, flat_abs, block_rows, ext)
                bar.update(_entry_bytes(entry, cfg, itemsize))
        writer.finish(meta)
        _copy_tokenizer(src, os.path.join(tmp, TOKENIZER_DIR))
        os.rename(tmp, dst)
    except BaseException:
        if writer is not None:
            writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _maybe_json(path: str) -> dict | None:
    return safetensors_dir.read_json(path) if os.path.exists(path) else None


def _tokenizer_meta(src: str) -> dict | None:
    files = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(src, f))]
    if not files:
        return None
    meta = {"kind": "hf_files", "dir": TOKENIZER_DIR, "files": files}
    if "tokenizer.model" in files:
        meta["kind"] = text_tokenizer.detect_kind(os.path.join(src, "tokenizer.model"))
        meta["model_file"] = "tokenizer.model"
    return meta


def _copy_tokenizer(src: str, dst_dir: str) -> None:
    files = [f for f in TOKENIZER_FILES if os.path.exists(os.path.join(src, f))]
    if files:
        os.makedirs(dst_dir)
        for f in files:
            shutil.copyfile(os.path.join(src, f), os.path.join(dst_dir, f))


# ---------------------------------------------------------------------------------------------
# Export.


def _hf_blocks(reader, part, stacked_index, block, dtype) -> Iterator[np.ndarray]:
    """HF rows of one part of a blocked 2-D leaf, block by block."""
    shape = reader.shape(part.leaf)
    axis = len(stacked_index) + (1 if part.transpose else 0)
    n = shape[axis]
    for b0 in range(0, n, block):
        sl = slice(b0, min(b0 + block, n))
        if part.transpose:
            x = reader.read(part.leaf, stacked_index + (slice(None), sl)).T
        else:
            x = reader.read(part.leaf, stacked_index + (sl, slice(None)))
        yield x.astype(dtype)


def _hf_part(reader, entry, part, stacked_index, dtype) -> np.ndarray:
    x = reader.read(part.leaf, stacked_index)
    if len(entry.shape) == 1:
        return x.reshape(-1).astype(dtype)
    rows = (part.rows[1] - part.rows[0]) if part.rows else entry.shape[0]
    if part.transpose:
        return x.reshape(entry.shape[1], rows).T.astype(dtype)
    return x.reshape((rows,) + tuple(entry.shape[1:])).astype(dtype)


def export_glm(
    src: str,
    dst: str,
    fmt: Format,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = safetensors_dir.DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
) -> list[str]:
    """Writes a checkpoint's GLM weights as an HF directory in ``fmt``'s layout.

    Args:
      src: checkpoint (manager root or step directory).
      dst: HF directory to create; must not exist.
      fmt: target layout.
      dtype: stored dtype; default: the dtype the weights were imported from, else param_dtype.
      max_shard_bytes: shard size limit (transformers' 5 GB default).
      progress: show a progress bar (bytes written, rate, ETA) on stderr.

    Returns:
      The files written.
    """
    dst = os.path.abspath(dst)
    if os.path.exists(dst):
        raise FileExistsError(f"--output {dst} already exists; remove it or choose a new path")
    root, step = checkpoint.resolve(src)
    meta = checkpoint.read_meta(src)
    cfg = checkpoint.model_config_from_meta(meta)
    source = (meta.get("extra") or {}).get("source") or {}
    dtype = dtype or source.get("dtype") or cfg.param_dtype
    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    reader = orbax_stream.ParamsReader(str(root / str(step)))
    abstract, _ = abstract_params(cfg)
    for name, leaf in orbax_stream.flatten(abstract).items():
        if reader.shape(name) != tuple(leaf.shape):
            raise ValueError(
                f"checkpoint {src}: parameter {name} has shape {list(reader.shape(name))}, the "
                f"model config in its meta says {list(leaf.shape)}"
            )
    table = fmt.rename_table(cfg)
    _, block_rows = chunk_shapes(table, abstract, None, {})
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.exporting-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        writer = safetensors_dir.ShardedWriter(tmp, max_shard_bytes)
        total = sum(_entry_bytes(e, cfg, np_dtype.itemsize) for e in table)
        name = f"export {os.path.basename(dst)}"
        with progress_lib.bar(total, name, "B", unit_scale=True, enabled=progress) as bar:
            for n, entry in enumerate(table):
                _export_entry(reader, writer, entry, cfg, block_rows, np_dtype)
                bar.update(_entry_bytes(entry, cfg, np_dtype.itemsize))
                if n == 0:  # buffers (chatglm inv_freq) after the embedding, as the reference
                    for k, v in fmt.extra_tensors(cfg, dtype).items():
                        writer.add(k, v)
        files = writer.close()
        layout = (
            token_layout_lib.TokenLayout.from_json(meta["token_layout"])
            if meta.get("token_layout")
            else None
        )
        config = _export_config(fmt, cfg, dtype, source, layout)
        files_lib.write_json(os.path.join(tmp, safetensors_dir.CONFIG_FILE), config, indent=2)
        files.append(safetensors_dir.CONFIG_FILE)
        generation = source.get("generation_config")
        if not generation:  # trained here: the stop / pad ids for generate(), from the layout
            generation = {k: config[k] for k in _ID_FIELDS if k in config}
        if generation:
            files_lib.write_json(os.path.join(tmp, GENERATION_CONFIG), generation, indent=2)
            files.append(GENERATION_CONFIG)
        tok_dir = os.path.join(str(root), TOKENIZER_DIR)
        for f in (meta.get("tokenizer") or {}).get("files", []):
            shutil.copyfile(os.path.join(tok_dir, f), os.path.join(tmp, f))
            files.append(f)
        if "tokenizer_config.json" in files and meta.get("token_layout"):
            _add_layout_tokens(os.path.join(tmp, "tokenizer_config.json"), meta["token_layout"])
        if not meta.get("tokenizer") and layout is not None and layout.text_is_utf8_bytes:
            for f, obj in hf_tokens.byte_tokenizer_files(layout).items():
                files_lib.write_json(os.path.join(tmp, f), obj, indent=2)
                files.append(f)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _export_config(
    fmt: Format,
    cfg: glm.GLMConfig,
    dtype: str,
    source: Mapping,
    layout: token_layout_lib.TokenLayout | None,
) -> dict:
    """config.json of an export.

    Back to the layout it was imported from: the source's config with the math fields set (token
    ids the source lacks or that fall outside the vocabulary come from the layout). Otherwise
    (trained here, or another layout): the format's template, the token ids from the layout
    (hf_tokens.token_ids; the source's where the layout has no such special), and the dtype under
    both keys: ``dtype`` (transformers >= 4.56, which prefers it when both are present) and
    ``torch_dtype`` (what transformers 4.46 reads; newer versions still accept it). No
    ``transformers_version``: the file is not written by transformers.
    """
    src_hf = dict(source.get("hf_config") or {})
    ids = hf_tokens.token_ids(layout) if layout is not None else {}
    if source.get("format") == fmt.name:
        base = src_hf
        for k, v in ids.items():
            if not hf_tokens.ids_fit(base.get(k), cfg.vocab_size):
                base[k] = v
        config = fmt.hf_config(cfg, dtype, base)
        if "dtype" in config:
            config["dtype"] = dtype
        return config
    base = {k: src_hf[k] for k in _ID_FIELDS if k in src_hf}
    base.update(ids)
    config = fmt.hf_config(cfg, dtype, base)
    config["dtype"] = dtype
    return config


def _add_layout_tokens(path: str, layout_json: dict) -> None:
    """Lists the layout's specials and speech tokens in ``added_tokens_decoder``.

    After ``--add_speech_tokens`` the source tokenizer_config.json does not know
    ``<|begin_of_audio|>``, ``<|end_of_audio|>`` and ``<|audio_k|>``; HF tokenizers add the entries
    of ``added_tokens_decoder`` by id, as glm-4-voice-9b's own tokenizer_config.json does.
    Entries already present are kept unchanged; the file is untouched when nothing is missing.
    """
    layout = token_layout_lib.TokenLayout.from_json(layout_json)
    tc = safetensors_dir.read_json(path)
    added = tc.setdefault("added_tokens_decoder", {})
    wanted = list(layout.specials) + [
        (f"<|audio_{k}|>", layout.audio_offset + k) for k in range(layout.num_audio_tokens)
    ]
    missing = [(t, i) for t, i in wanted if str(i) not in added]
    if not missing:
        return
    for t, i in missing:
        added[str(i)] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    tc["added_tokens_decoder"] = dict(sorted(added.items(), key=lambda kv: int(kv[0])))
    files_lib.write_json(path, tc, indent=2)


def _export_entry(reader, writer, entry, cfg, block_rows, dtype) -> None:
    for i in range(cfg.num_layers) if entry.per_layer else [None]:
        name = entry.name.format(i=i)
        stacked_index = (i,) if entry.per_layer else ()
        if len(entry.parts) == 1 and entry.parts[0].leaf in block_rows:
            part = entry.parts[0]
            blocks = _hf_blocks(reader, part, stacked_index, block_rows[part.leaf], dtype)
            writer.add_blocks(name, entry.shape, dtype, blocks)
            continue
        pieces = [_hf_part(reader, entry, p, stacked_index, dtype) for p in entry.parts]
        writer.add(name, np.concatenate(pieces, axis=0) if len(pieces) > 1 else pieces[0])


# ---------------------------------------------------------------------------------------------
# Synthetic checkpoints (tests, benchmarks).


def write_synthetic(
    directory: str,
    cfg: glm.GLMConfig,
    fmt: Format,
    *,
    dtype: str = "float32",
    seed: int = 0,
    max_shard_bytes: int = safetensors_dir.DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Writes a random HF checkpoint of ``cfg`` in ``fmt``'s layout, one tensor at a time.

    Weights are N(0, 0.02^2) (norm scales N(1, 0.1^2)), so the model is numerically sane.
    """
    os.makedirs(directory)
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(jax.numpy.dtype(dtype))
    writer = safetensors_dir.ShardedWriter(directory, max_shard_bytes)
    for n, entry in enumerate(fmt.rename_table(cfg)):
        for i in range(cfg.num_layers) if entry.per_layer else [None]:
            mean, std = (1.0, 0.1) if entry.parts[0].leaf.endswith("scale") else (0.0, 0.02)
            rows = max(1, BLOCK_BYTES // (4 * math.prod(entry.shape[1:])))

            def blocks(entry=entry, rows=rows, mean=mean, std=std):
                for b0 in range(0, entry.shape[0], rows):
                    shape = (min(rows, entry.shape[0] - b0),) + entry.shape[1:]
                    yield (mean + std * rng.standard_normal(shape, np.float32)).astype(np_dtype)

            writer.add_blocks(entry.name.format(i=i), entry.shape, np_dtype, blocks())
        if n == 0:
            for k, v in fmt.extra_tensors(cfg, dtype).items():
                writer.add(k, v)
    writer.close()
    files_lib.write_json(
        os.path.join(directory, safetensors_dir.CONFIG_FILE),
        fmt.hf_config(cfg, dtype, None),
        indent=2,
    )
