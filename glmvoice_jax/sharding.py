"""Meshes and the one logical-axis rules table.

Every parameter and constrained activation in glmvoice_jax carries *logical* axis names. This module
is the only place that maps them to the physical mesh axes ("data", "fsdp", "tensor"). A config
selects a preset row of the table by name (``config.axis_rules``); model code never names a mesh
axis. Conventions follow house_style.md §9 and jax_stack_notes.md §3-4.

Logical names:
  params: embed, mlp, heads, kv_heads, head_dim, vocab, layers, codebook, conv_in, conv_out, norm
  activations: act_batch, act_request, act_len, act_embed, act_heads, act_kv_heads, act_mlp,
    act_vocab
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# One table: logical name -> mesh axes, per preset. glm4voice.md §4.2: with 2 KV heads, K/V can be
# split over at most 2 tensor shards, so kv_heads stays replicated in every preset.
_TABLE: dict[str, dict[str, str | tuple[str, ...] | None]] = {
    #                 fsdp                 fsdp_tp              dp
    "act_batch": {"fsdp": ("data", "fsdp"), "fsdp_tp": ("data", "fsdp"), "dp": ("data", "fsdp")},
    # Generation (inference/engine.py): requests split over "data" only, so the weights stay
    # where they are and only activations move (decode reads every weight once per step); the
    # KV cache still splits its rows over act_batch.
    "act_request": {"fsdp": "data", "fsdp_tp": "data", "dp": ("data", "fsdp")},
    "act_len": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "act_embed": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "act_heads": {"fsdp": None, "fsdp_tp": "tensor", "dp": None},
    "act_kv_heads": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "act_mlp": {"fsdp": None, "fsdp_tp": "tensor", "dp": None},
    "act_vocab": {"fsdp": None, "fsdp_tp": "tensor", "dp": None},
    "embed": {"fsdp": "fsdp", "fsdp_tp": "fsdp", "dp": None},
    "mlp": {"fsdp": None, "fsdp_tp": "tensor", "dp": None},
    "heads": {"fsdp": None, "fsdp_tp": "tensor", "dp": None},
    "kv_heads": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "head_dim": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "vocab": {"fsdp": None, "fsdp_tp": "tensor", "dp": None},
    "layers": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "codebook": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "conv_in": {"fsdp": None, "fsdp_tp": None, "dp": None},
    "conv_out": {"fsdp": "fsdp", "fsdp_tp": "fsdp", "dp": None},
    "norm": {"fsdp": None, "fsdp_tp": None, "dp": None},
}

PRESETS: tuple[str, ...] = ("fsdp", "fsdp_tp", "dp")


def rules(preset: str) -> Rules:
    """The (logical, mesh axes) pairs of one preset, for ``nnx.logical_axis_rules``."""
    if preset not in PRESETS:
        raise ValueError(
            f"unknown axis_rules preset {preset!r}; known presets: {', '.join(PRESETS)}. "
            "Set config.axis_rules to one of them."
        )
    return tuple((name, row[preset]) for name, row in _TABLE.items())


def resolve_mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves the (data, fsdp, tensor) sizes; at most one axis may be -1 (= the rest).

    Raises:
      ValueError: naming the sizes, the device count and the fix when they do not fit.
    """
    unknown = set(mesh_cfg) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; mesh axes are {MESH_AXES}")
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes multiply to {fixed}, which "
                f"does not divide the {num_devices} devices; choose sizes whose product divides "
                f"{num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but {num_devices} are "
            f"available; set one axis to -1 (e.g. --config.mesh.fsdp=-1) or make the product "
            f"equal {num_devices}"
        )
    return tuple(sizes)  # type: ignore[return-value]


def num_slices(devices: Sequence[jax.Device]) -> int:
    """Number of TPU slices the devices span (1 for CPU / GPU / single-slice TPU)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh, with Auto axis types (jax_stack_notes.md §3.2).

    Within one slice: the ICI-aware ``jax.make_mesh``. Across several TPU slices ``jax.make_mesh``
    refuses the devices, so the hybrid mesh puts ``num_slices`` of the data axis on DCN (the only
    axis whose traffic, one gradient reduction per step, tolerates it) and the rest on ICI. The one
    mesh builder of both trainers, the AOT pre-flight and inference.

    Raises:
      ValueError: when the data axis is not a multiple of the slice count.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg, len(devices))
    slices = num_slices(devices)
    if slices == 1:
        return jax.make_mesh(
            shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
        )
    data, fsdp, tensor = shape
    if data % slices:
        raise ValueError(
            f"the devices span {slices} slices, so mesh.data ({data}) must be a multiple of "
            f"{slices} (data parallelism crosses the slices over DCN); e.g. set "
            f"--config.mesh.data={slices} and --config.mesh.fsdp=-1"
        )
    grid = mesh_utils.create_hybrid_device_mesh(
        (data // slices, fsdp, tensor), (slices, 1, 1), devices, allow_split_physical_axes=True
    )
    return Mesh(np.asarray(grid), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None], rule_pairs: Rules) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec through the given rules."""
    table = dict(rule_pairs)
    out = []
    for n in names:
        if n is None:
            out.append(None)
        elif n not in table:
            raise KeyError(f"logical axis {n!r} has no rule; add it to sharding._TABLE")
        else:
            out.append(table[n])
    return PartitionSpec(*out)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation by logical names, using the active ``nnx.logical_axis_rules``.

    A no-op outside a mesh + rules context (e.g. plain single-device use of a model).
    """
    rule_pairs = current_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rule_pairs or mesh is None or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, tuple(rule_pairs)))


def current_rules() -> Rules:
    """The rules set by the innermost ``nnx.logical_axis_rules`` context (empty outside one)."""
    return tuple(flax_spmd.get_logical_axis_rules() or ())


@contextlib.contextmanager
def activate(mesh: Mesh, preset: str) -> Iterator[None]:
    """Enters the mesh and the rules of ``preset``: all model creation and stepping go here."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules(preset)):
        yield


def batch_sharding(mesh: Mesh, preset: str, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] input array: batch over the data-parallel axes."""
    spec = logical_to_spec(("act_batch",) + (None,) * (ndim - 1), rules(preset))
    return NamedSharding(mesh, spec)


def data_parallel_size(mesh: Mesh, preset: str) -> int:
    """How many ways the batch axis is split on this mesh."""
    axes = dict(rules(preset))["act_batch"]
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return int(np.prod([mesh.shape[a] for a in axes]))


def shard_shape(shape: Sequence[int], spec: PartitionSpec, mesh_shape: Mapping[str, int]) -> tuple:
    """Per-device shape of an array of ``shape`` sharded by ``spec`` (ceil division)."""
    out = []
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        axes = (axes,) if isinstance(axes, str) else (axes or ())
        parts = int(np.prod([mesh_shape[a] for a in axes])) if axes else 1
        out.append(-(-dim // parts))
    return tuple(out)


def param_shardings(make_model, mesh: Mesh, preset: str):
    """(graphdef, abstract params, NamedShardings) of a model, without allocating it.

    Params and shardings are nested dicts (``nnx.to_pure_dict`` layout), the form in which train
    state is stepped and checkpointed.
    """
    with activate(mesh, preset):
        abs_model = nnx.eval_shape(make_model)
        graphdef, abs_state = nnx.split(abs_model)
        specs = nnx.get_partition_spec(abs_state)
    abs_params = nnx.to_pure_dict(abs_state)
    spec_tree = nnx.to_pure_dict(specs)
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, s),
        spec_tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    return graphdef, abs_params, shardings


def init_params(make_model, mesh: Mesh, preset: str):
    """Creates parameters already sharded, as (graphdef, params, shardings).

    The constructor is jitted with out_shardings, so no full copy ever lives on one device.
    """
    graphdef, _, shardings = param_shardings(make_model, mesh, preset)

    def create():
        return nnx.to_pure_dict(nnx.state(make_model()))

    with activate(mesh, preset):
        params = jax.jit(create, out_shardings=shardings)()
    return graphdef, params, shardings
