"""Fused attention for packed rows on accelerators: Pallas splash (TPU) and cuDNN flash (GPU).

Both compute exactly what ``attention.dot_product_attention(impl="xla")`` computes (causal within
each packed segment, padding segment 0 attending to padding, scale 1/sqrt(H), float32 softmax
statistics) without materialising the [B, N, T, S] score tensor, which is what bounds the
sequence length and the memory of the ``xla`` path.

* ``"splash"``: ``jax.experimental.pallas.ops.tpu.splash_attention``. The kernel sees one row and
  one kv head at a time (its MQA form: G query heads share one K/V), so grouped-query attention
  runs as a vmap over rows and kv heads and K/V are never repeated to N heads. The causal mask is
  static (block-sparse: blocks above the diagonal are skipped); packing enters as ``SegmentIds``.
  Pallas kernels run per device, so the call sits in a ``shard_map`` over the mesh axes that
  shard batch and heads (``act_batch`` / ``act_heads`` in sharding.py's table). Runs on CPU only
  in Pallas interpret mode (tests).
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` with ``is_causal`` and the
  segment-equality mask (cuDNN folds it in as a bias; GQA is native). XLA partitions the cuDNN
  call over batch and heads itself. cuDNN flash takes bf16 / fp16 only.

Axes: B batch, T length, N query heads, K kv heads, G = N / K, H head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from glmvoice_jax import sharding

# Splash tile edge (queries and keys, forward and backward). Tiles only change speed, never the
# numbers; 512 is the usual v5p choice. Rows shorter than this use one tile of the row length,
# which the kernel needs to be a multiple of its 128 lanes.
SPLASH_BLOCK = 512
SPLASH_LANES = 128

# The backend each fused implementation needs (platform names of jax devices).
PLATFORMS = {"splash": ("tpu",), "cudnn": ("gpu", "cuda")}
FUSED = tuple(PLATFORMS)


def target_platform() -> str:
    """The platform the current trace compiles for: the mesh's devices, else the default backend.

    The mesh decides, not ``jax.default_backend()``: the AOT pre-flight traces the TPU step on a
    CPU host under a mesh of TPU topology devices.
    """
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh is None or mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def check_platform(impl: str, platform: str, interpret: bool = False) -> None:
    """Raises when ``impl`` cannot run on ``platform`` (interpret mode runs splash anywhere)."""
    if impl == "splash" and interpret:
        return
    if platform not in PLATFORMS[impl]:
        kernel = "Pallas TPU kernel" if impl == "splash" else "cuDNN flash attention"
        raise ValueError(
            f"model.attention_impl={impl!r} needs a {PLATFORMS[impl][0].upper()} backend "
            f"({kernel}), but the step is built for {platform!r} devices; use 'xla' or 'chunked' "
            "there"
        )


def _splash_kernel(t: int, heads: int, interpret: bool):
    """The MQA splash kernel for rows of length t and ``heads`` query heads per kv head."""
    if t % SPLASH_LANES:
        raise ValueError(
            f"model.attention_impl='splash' needs the sequence length to be a multiple of "
            f"{SPLASH_LANES}, got {t}; pad input.seq_len or use 'chunked'"
        )
    b = min(SPLASH_BLOCK, t)
    if t % b:
        b = SPLASH_LANES  # any multiple of 128 divides by 128
    blocks = splash.BlockSizes(
        block_q=b,
        block_kv=b,
        block_kv_compute=b,
        block_q_dkv=b,
        block_kv_dkv=b,
        block_kv_dkv_compute=b,
        block_q_dq=b,
        block_kv_dq=b,
    )
    mask = splash.MultiHeadMask([splash.CausalMask((t, t)) for _ in range(heads)])
    return splash.make_splash_mqa(
        mask, block_sizes=blocks, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _splash_local(q, k, v, segment_ids, *, group: int, head_axes, interpret: bool):
    """One device's rows: q (b, T, n, H) local heads, k/v (b, T, K, H) all kv heads."""
    b, t, n, h = q.shape
    if n % group and group % n:
        raise ValueError(
            f"splash attention: {n} query heads per device do not split into kv groups of {group}"
        )
    kv_here = max(1, n // group)
    g = n // kv_here
    # Global head index of local head 0 is shard * n; its kv head is that // group.
    start = jax.lax.axis_index(head_axes) * n // group if head_axes else 0
    k = jax.lax.dynamic_slice_in_dim(k, start, kv_here, axis=2)
    v = jax.lax.dynamic_slice_in_dim(v, start, kv_here, axis=2)
    scale = jnp.asarray(h**-0.5, q.dtype)  # the kernel does not scale; the xla path scales q.k
    qg = (q * scale).reshape(b, t, kv_here, g, h).transpose(0, 2, 3, 1, 4)  # (b, K', G, T, H)
    kt = k.transpose(0, 2, 1, 3)  # (b, K', T, H)
    vt = v.transpose(0, 2, 1, 3)
    kernel = _splash_kernel(t, g, interpret)

    def row(qr, kr, vr, seg):
        ids = splash.SegmentIds(q=seg, kv=seg)
        return jax.vmap(lambda qh, kh, vh: kernel(qh, kh, vh, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(row)(qg, kt, vt, segment_ids)  # (b, K', G, T, H)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _axes(spec_entry) -> tuple[str, ...]:
    if spec_entry is None:
        return ()
    return (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry)


def splash_attention(q, k, v, segment_ids, *, interpret: bool = False) -> jax.Array:
    """Causal packed attention with the splash kernel; same contract as the xla path.

    Args:
      q: [B, T, N, H] queries (rotary applied).
      k: [B, T, K, H] keys; N must be a multiple of K.
      v: [B, T, K, H] values.
      segment_ids: [B, T] int, 0 = padding.
      interpret: run the Pallas kernel in interpret mode (any backend; for tests).

    Returns:
      [B, T, N, H] in q's dtype.
    """
    check_platform("splash", target_platform(), interpret)
    n, kh = q.shape[2], k.shape[2]
    if n % kh:
        raise ValueError(f"num_heads ({n}) must be a multiple of num_kv_heads ({kh})")
    group = n // kh
    mesh = jax.sharding.get_abstract_mesh()
    rules = sharding.current_rules()
    if mesh is None or mesh.empty or not rules:
        local = functools.partial(_splash_local, group=group, head_axes=(), interpret=interpret)
        return local(q, k, v, segment_ids)
    qspec = sharding.logical_to_spec(("act_batch", "act_len", "act_heads", None), rules)
    batch, heads = _axes(qspec[0]), _axes(qspec[2])
    batch = tuple(a for a in batch if mesh.shape[a] > 1) or None
    heads = tuple(a for a in heads if mesh.shape[a] > 1)
    qspec = PartitionSpec(batch, None, heads or None, None)
    kvspec = PartitionSpec(batch, None, None, None)
    local = functools.partial(_splash_local, group=group, head_axes=heads, interpret=interpret)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(qspec, kvspec, kvspec, PartitionSpec(batch, None)),
        out_specs=qspec,
        check_vma=False,
    )(q, k, v, segment_ids)


def cudnn_arguments(q, segment_ids) -> dict:
    """Keyword arguments of ``jax.nn.dot_product_attention`` that reproduce the xla path.

    Causality comes from ``is_causal`` (cuDNN skips the upper triangle); packing from the
    [B, 1, T, S] segment-equality mask. Within a row, causal AND same-segment is exactly
    ``attention.packed_causal_mask``.
    """
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, S)
    return {"mask": same[:, None], "is_causal": True, "scale": q.shape[-1] ** -0.5}


def cudnn_attention(q, k, v, segment_ids, *, implementation: str = "cudnn") -> jax.Array:
    """Causal packed attention through cuDNN flash; same contract as ``splash_attention``.

    ``implementation="xla"`` runs the same arguments through jax's reference path (CPU tests of
    the plumbing; cuDNN itself needs a GPU).
    """
    if implementation == "cudnn":
        check_platform("cudnn", target_platform())
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError(
                f"model.attention_impl='cudnn' needs model.dtype bfloat16 or float16 (cuDNN flash "
                f"attention), got {q.dtype}"
            )
    kw = cudnn_arguments(q, segment_ids)
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation, **kw)
