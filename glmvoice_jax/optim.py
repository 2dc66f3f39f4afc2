"""Optimizer and learning-rate schedules built from the config's ``optim`` and ``schedule``.

AdamW with (b1, b2) = (0.9, 0.95) as in GLM-4-Voice pre-training (glm4voice.md §7.4, §12 #16),
weight decay masked off norms and biases, global-norm clipping. Schedules: linear warm-up, then
linear decay (the paper: 6e-5 -> 6e-6) or cosine decay to ``end_lr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax


def schedule(cfg: Mapping, total_steps: int) -> optax.Schedule:
    """Warm-up to peak_lr over warmup_steps, then linear or cosine decay to end_lr."""
    kind = cfg["decay"]
    warmup = int(cfg["warmup_steps"])
    peak, end = float(cfg["peak_lr"]), float(cfg["end_lr"])
    decay_steps = max(total_steps - warmup, 1)
    if kind == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif kind == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"schedule.decay must be 'linear', 'cosine' or 'constant', not {kind!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: kernels and embeddings, not norms or biases."""

    def keep(path, _):
        last = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
        return last not in ("scale", "bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def make(cfg: Mapping, lr: optax.Schedule, params: Any) -> optax.GradientTransformation:
    """AdamW + clipping. ``params`` (or an abstract copy) fixes the weight-decay mask."""
    parts = []
    if cfg["grad_clip_norm"] and cfg["grad_clip_norm"] > 0:
        parts.append(optax.clip_by_global_norm(float(cfg["grad_clip_norm"])))
    parts.append(
        optax.adamw(
            lr,
            b1=float(cfg["b1"]),
            b2=float(cfg["b2"]),
            eps=float(cfg["eps"]),
            weight_decay=float(cfg["weight_decay"]),
            mask=decay_mask(params),
        )
    )
    return optax.chain(*parts)
