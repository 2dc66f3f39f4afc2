"""The AOT pre-flight behind ``glmvoice-aot``: a trainer's step compiled for a TPU topology.

The step is the one ``glmvoice-train`` runs for ``config.trainer`` (``trainers/aot.py``'s
``STEPS``), lowered for the topology's devices instead of this machine's. XLA's TPU compiler
(libtpu) plans every buffer, so an OOM shows here before a pod is rented (anchors.md §5). The
report gives per device: arguments, outputs, temporaries, code and their total against the chip's
HBM; FLOPs per step; the step time implied by a stated MFU. ``report`` compiles, ``format_report``
prints. Import this module only after JAX's environment is set (cli/aot.py does that first).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
from jax.experimental import topologies

from glmvoice_jax import metrics, sharding
from glmvoice_jax.trainers import aot as aot_steps

GIB = 2**30
CPU_PEAK = 1.5e11  # FLOP/s of one CPU device when the config names none (the LM configs' value)


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation.

    Attributes:
      prefix: topology-name prefix understood by libtpu ("v5" is v5p).
      hbm_bytes: HBM per chip.
      dims: 3 for the 3-D torus generations (v4, v5p), else 2.
      cores_per_chip: TensorCores per chip, which Cloud TPU slice names count (v4/v5p: 2).
      chip_config: libtpu chip config ("megacore": one JAX device per chip).
    """

    prefix: str
    hbm_bytes: int
    dims: int
    cores_per_chip: int
    chip_config: str


# HBM as XLA's TPU compiler budgets it (its RESOURCE_EXHAUSTED messages), a little under the
# marketed 95 / 32 / 16 / 32 GB: v5p and v6e measured here, v4 from anchors.md §12 #10, v5e
# assumed to follow v6e (16 GiB less its 0.25 GiB reserve).
CHIPS = {
    "v4": Chip("v4", int(30.75 * GIB), 3, 2, "megacore"),
    "v5p": Chip("v5", int(95.74 * GIB), 3, 2, "megacore"),
    "v5e": Chip("v5e", int(15.75 * GIB), 2, 1, "default"),
    "v6e": Chip("v6e", int(31.25 * GIB), 2, 1, "default"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice (or several) as libtpu describes it.

    Attributes:
      name: what the user asked for.
      chip: the generation.
      shape: chips per torus dimension of one slice.
      num_slices: slices joined by DCN.
    """

    name: str
    chip: Chip
    shape: tuple[int, ...]
    num_slices: int = 1

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape) * self.num_slices

    @property
    def topology_name(self) -> str:
        return f"{self.chip.prefix}:{'x'.join(map(str, self.shape))}"

    @property
    def wrap(self) -> tuple[bool, bool, bool]:
        # Wrap-around links: 3-D slices are tori once every dimension has 4+ chips; a 2-D pod's
        # dimension is a ring when it spans the full 16 chips.
        if self.chip.dims == 3:
            return (min(self.shape) >= 4,) * 3  # type: ignore[return-value]
        return (self.shape[0] == 16, self.shape[1] == 16, False)


def _slice_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The most cube-like power-of-two torus with this many chips (Cloud TPU's slice shapes)."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{chips} chips is not a power of two; name the shape, e.g. v5p:4x4x8")
    shape = [1] * dims
    i = 0
    while math.prod(shape) < chips:
        shape[i % dims] *= 2
        i += 1
    shape.sort()
    return tuple([d for d in shape if d > 1] + [d for d in shape if d == 1])  # v5p-8: 2x2x1


def parse_topology(name: str) -> Topology:
    """'v5p-128' | 'v6e:16x16' | '2xv6e-256' -> Topology.

    Raises:
      ValueError: an unknown generation or an impossible size, naming the accepted forms.
    """
    m = re.fullmatch(r"(?:(\d+)x)?(v4|v5p|v5e|v6e)([-:])([\dx]+)", name.strip())
    if not m:
        raise ValueError(
            f"unknown topology {name!r}; use GEN-SIZE (v5p-128, v6e-256, v5e-64, v4-32), "
            "GEN:AxBxC (v5p:4x4x8) or NxGEN-SIZE for N slices (2xv6e-256)"
        )
    slices, gen, sep, size = m.groups()
    chip = CHIPS[gen]
    if sep == ":":
        shape = tuple(int(x) for x in size.split("x"))
        if len(shape) != chip.dims:
            raise ValueError(f"{gen} slices are {chip.dims}-D; got shape {size}")
    else:
        cores = int(size)
        if cores % chip.cores_per_chip:
            raise ValueError(
                f"{name}: {gen} slice names count TensorCores ({chip.cores_per_chip} per chip); "
                f"{cores} is not a multiple"
            )
        shape = _slice_shape(cores // chip.cores_per_chip, chip.dims)
    return Topology(name, chip, shape, int(slices or 1))


def _tpu_devices(topo: Topology):

    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topo.topology_name,
        chip_config_name=topo.chip.chip_config,
        chips_per_host_bounds=(2, 2, 1),
        num_slices=topo.num_slices,
        wrap=topo.wrap,
    )
    return list(desc.devices)


def compile_step(step: aot_steps.AotStep) -> tuple[object | None, dict]:
    """Lowers and compiles ``step``; returns (compiled, timings).

    ``compiled`` is None when XLA refuses the program for lack of memory (RESOURCE_EXHAUSTED);
    the compiler's message, with the bytes it needed, is then ``info["oom"]``.
    """
    t0 = time.time()
    oom = None
    with sharding.activate(step.mesh, step.axis_rules):
        lowered = step.jitted.lower(*step.args)
        t1 = time.time()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            compiled, oom = None, str(e).strip().splitlines()[0]
    return compiled, {"lower_s": t1 - t0, "compile_s": time.time() - t1, "oom": oom}


def memory_report(compiled) -> dict:
    """Per-device bytes from XLA's buffer assignment; total = live at once, donation counted."""
    m = compiled.memory_analysis()
    out = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "temps": m.temp_size_in_bytes,
        "code": m.generated_code_size_in_bytes,
        "host_temps": getattr(m, "host_temp_size_in_bytes", 0),
    }
    # Donated arguments alias their outputs: count those bytes once.
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temps"] + out["code"]
    return out


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def _benchmark(step: aot_steps.AotStep, compiled, steps: int) -> float:
    """Mean seconds per step of ``steps`` timed steps on random inputs (after one warm-up)."""
    params, train, batch = step.make_args()
    with sharding.activate(step.mesh, step.axis_rules):
        params, train, out = compiled(params, train, batch)  # warm-up
        jax.block_until_ready(out["loss"])
        t0 = time.time()
        for _ in range(steps):
            params, train, out = compiled(params, train, batch)
        jax.block_until_ready(out["loss"])
    return (time.time() - t0) / steps


def report(config, topology: str, mfu: float, benchmark_steps: int = 0) -> dict:
    """Compiles the step of ``config.trainer`` for ``topology`` ("cpu" = local devices).

    Returns the numbers as a dict (``format_report`` prints it).
    """
    aot_steps.validate(config)
    if benchmark_steps and topology != "cpu":
        raise ValueError("--benchmark_steps runs steps, so it needs --topology cpu")
    if topology == "cpu":
        devices, hbm, chips, kind = jax.devices(), None, jax.device_count(), "cpu"
    else:
        topo = parse_topology(topology)
        devices = _tpu_devices(topo)
        hbm, chips, kind = topo.chip.hbm_bytes, topo.num_chips, devices[0].device_kind
    step = aot_steps.build(config, devices)
    compiled, info = compile_step(step)
    # Only a CPU device needs the configured peak; the speech-tokenizer configs have none.
    peak = metrics.peak_flops(devices[0], config.metrics.get("peak_flops_per_device", CPU_PEAK))
    step_s = step.model_flops / (chips * peak * mfu)
    out = {
        "trainer": config.trainer,
        "topology": topology,
        "device_kind": kind,
        "chips": chips,
        "mesh": dict(step.mesh.shape),
        **step.fields,
        "step": step.summary,
        "parameters": step.parameters,
        "memory": memory_report(compiled) if compiled is not None else None,
        "oom": info["oom"],
        "hbm_bytes": hbm,
        "xla_flops_per_device": _xla_flops(compiled) if compiled is not None else None,
        "model_flops_per_step": step.model_flops,
        "model_flops_basis": step.flops_basis,
        "peak_flops_per_chip": peak,
        "mfu": mfu,
        "implied_step_s": step_s,
        "units": step.units,
        "units_per_step": step.units_per_step,
        "implied_units_per_s_per_chip": step.units_per_step / step_s / chips,
        "lower_s": info["lower_s"],
        "compile_s": info["compile_s"],
    }
    if step.units == "tokens":
        out["implied_tokens_per_s_per_chip"] = out["implied_units_per_s_per_chip"]
    out["fits"] = compiled is not None and (
        hbm is None or out["memory"]["total"] <= out["hbm_bytes"]
    )
    if benchmark_steps and compiled is not None:
        out["measured_step_s"] = _benchmark(step, compiled, benchmark_steps)
    return out


def format_report(r: dict) -> str:
    def gib(x):
        return f"{x / GIB:8.2f} GiB" if x >= GIB / 10 else f"{x / 2**20:8.2f} MiB"

    lines = [
        f"topology {r['topology']}: {r['chips']} x {r['device_kind']}, mesh {r['mesh']}",
        f"{r['trainer']} step: {r['step']}, {r['parameters']:,} parameters",
        f"compile: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s",
    ]
    mem = r["memory"]
    if mem is None:
        lines.append(f"per-device memory: DOES NOT FIT; XLA: {r['oom']}")
    else:
        lines += [
            "per-device memory:",
            f"  arguments   {gib(mem['arguments'])}   (params + optimizer state + batch shard)",
            f"  outputs     {gib(mem['outputs'])}   (aliased to donated arguments: "
            f"{mem['aliased'] / GIB:.2f} GiB)",
            f"  temps       {gib(mem['temps'])}   (activations, gradients, collectives)",
            f"  code        {gib(mem['code'])}",
        ]
        if mem["host_temps"]:
            lines.append(f"  host temps  {gib(mem['host_temps'])}   (offloaded to host memory)")
        total = f"  total       {gib(mem['total'])}"
        if r["hbm_bytes"]:
            frac = mem["total"] / r["hbm_bytes"]
            verdict = "fits" if r["fits"] else "DOES NOT FIT"
            total += f"   of {r['hbm_bytes'] / GIB:.2f} GiB HBM = {100 * frac:.0f}%: {verdict}"
        lines.append(total)
    flops = f"FLOPs per step: model {r['model_flops_per_step']:.3e} ({r['model_flops_basis']})"
    if r["xla_flops_per_device"] is not None:
        # XLA's cost analysis counts a while loop body once, so scanned layers are undercounted.
        flops += f"; XLA counts {r['xla_flops_per_device']:.3e} per device (loop bodies once)"
    lines += [
        flops,
        f"at {100 * r['mfu']:.0f}% MFU of {r['peak_flops_per_chip'] / 1e12:.3g} TFLOP/s per "
        f"chip: {r['implied_step_s']:.2f} s per step, "
        f"{r['implied_units_per_s_per_chip']:,.0f} {r['units']}/s/chip",
    ]
    if "measured_step_s" in r:
        lines.append(f"measured: {r['measured_step_s']:.3f} s per step on this machine")
    return "\n".join(lines)
