"""Vector quantizer of the GLM-4-Voice speech tokenizer: EMA codebook, dead-code restart.

Ref: GLM-4-Voice ``speech_tokenizer/modeling_whisper.py`` (``vector_quantize`` and the VQ branch of
``WhisperVQEncoder.forward``) @ eb00ce9; glm4voice.md §2.2 step 6-7, §2.5-2.7, §12 #1-#5.

* Nearest code by squared L2, d(x, c) = |x|^2 + |c|^2 - 2 x.c, first index on ties.
* Training output is straight-through, x + sg(q - x); inference output is q.
* EMA mode (``ema_decay`` set): the codebook is not a trainable parameter. Per step, with the frame
  mask applied and counts/sums reduced over data-parallel shards:
  n = counts, dw = sums of frames per code; ema_count <- d ema_count + (1 - d) n; Laplace smoothing
  ema_count <- (ema_count + eps) / (sum + K eps) * sum; ema_weight <- d ema_weight + (1 - d) dw;
  codebook <- ema_weight / ema_count. Loss = loss_scale * commit * masked_MSE(x, sg(q)).
* Without EMA the codebook is a Param and the loss adds masked_MSE(q, sg(x)) (the reference
  fallback, unused by the release).
* Every ``restart_interval`` EMA steps, codes with ema_count < decay**interval are overwritten by
  frames sampled without replacement from the valid frames of the *global* batch with one PRNG
  key (project default §12 #5), so the result does not depend on the device count.

The pure functions take an optional ``axis_name``: inside ``shard_map``/``vmap`` over the data axis
they psum the statistics, so every shard computes the same update. Under plain ``jit`` with
global (GSPMD-sharded) arrays no axis name is needed.

Axes: N frames (flattened batch x length), D embed, C codebook entries.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

LAPLACE_EPS = 1e-5
_HIGHEST = jax.lax.Precision.HIGHEST


class VQStats(nnx.Variable):
    """EMA codebook state: changed by the EMA rule and restarts, never by the optimizer."""


class VQState(NamedTuple):
    """The EMA state the pure update functions read and return.

    Attributes:
      codebook: [C, D] code vectors (what the quantizer looks up).
      ema_count: [C] float32 smoothed usage counts.
      ema_weight: [C, D] float32 smoothed sums of assigned frames.
    """

    codebook: jax.Array
    ema_count: jax.Array
    ema_weight: jax.Array


def nearest_codes(x: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Squared-L2 nearest codebook entries.

    Args:
      x: [..., D] vectors.
      codebook: [C, D].

    Returns:
      (ids [...] int32, q [..., D] in the codebook dtype).
    """
    x32 = x.astype(jnp.float32)
    c32 = codebook.astype(jnp.float32)
    dots = jnp.einsum("...D,CD->...C", x32, c32, precision=_HIGHEST)
    dist = jnp.sum(x32 * x32, axis=-1, keepdims=True) + jnp.sum(c32 * c32, axis=-1) - 2.0 * dots
    ids = jnp.argmin(dist, axis=-1).astype(jnp.int32)
    return ids, jnp.take(codebook, ids, axis=0)


def straight_through(x: jax.Array, q: jax.Array) -> jax.Array:
    """X + sg(q - x): the value of q, the gradient of x."""
    return x + jax.lax.stop_gradient(q.astype(x.dtype) - x)


def _psum(value: jax.Array, axis_name: str | None) -> jax.Array:
    return value if axis_name is None else jax.lax.psum(value, axis_name)


def masked_mse(a: jax.Array, b: jax.Array, mask: jax.Array, axis_name: str | None = None):
    """Mean over D of (a - b)^2, then mean over valid frames (0 when no frame is valid).

    Args:
      a: [..., D].
      b: [..., D].
      mask: [...] bool or 0/1, valid frames.
      axis_name: data-parallel axis to reduce over (inside shard_map/vmap), or None.

    Returns:
      float32 scalar.
    """
    m = mask.astype(jnp.float32)
    per_frame = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=-1)
    total = _psum(jnp.sum(per_frame * m), axis_name)
    count = _psum(jnp.sum(m), axis_name)
    return total / jnp.maximum(count, 1.0)


def code_counts(ids: jax.Array, mask: jax.Array, num_codes: int, axis_name: str | None = None):
    """[C] float32 number of valid frames assigned to each code (summed over shards)."""
    m = mask.reshape(-1).astype(jnp.float32)
    n = jax.ops.segment_sum(m, ids.reshape(-1), num_segments=num_codes)
    return _psum(n, axis_name)


def ema_update(
    state: VQState,
    x: jax.Array,
    ids: jax.Array,
    mask: jax.Array,
    *,
    decay: float,
    eps: float = LAPLACE_EPS,
    axis_name: str | None = None,
) -> tuple[VQState, jax.Array]:
    """One EMA codebook step (glm4voice.md §2.5).

    Args:
      state: the current codebook state.
      x: [..., D] pre-quantization frames (gradients are stopped).
      ids: [...] their code ids (from ``nearest_codes`` with ``state.codebook``).
      mask: [...] valid frames; masked frames contribute nothing.
      decay: EMA decay d.
      eps: Laplace smoothing epsilon.
      axis_name: data-parallel axis to psum counts and sums over, or None.

    Returns:
      (new state, counts n [C] of this step).
    """
    num_codes, dim = state.codebook.shape
    x = jax.lax.stop_gradient(x).astype(jnp.float32).reshape(-1, dim)  # (N, D)
    m = mask.reshape(-1).astype(jnp.float32)  # (N,)
    flat_ids = ids.reshape(-1)
    n = code_counts(flat_ids, m, num_codes, axis_name)  # (C,)
    dw = _psum(jax.ops.segment_sum(x * m[:, None], flat_ids, num_segments=num_codes), axis_name)
    ema_count = decay * state.ema_count + (1.0 - decay) * n
    total = jnp.sum(ema_count)
    ema_count = (ema_count + eps) / (total + num_codes * eps) * total
    ema_weight = decay * state.ema_weight + (1.0 - decay) * dw
    codebook = (ema_weight / ema_count[:, None]).astype(state.codebook.dtype)
    return VQState(codebook, ema_count, ema_weight), n


def restart_dead_codes(
    state: VQState,
    x: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    threshold: float,
    axis_name: str | None = None,
) -> tuple[VQState, jax.Array]:
    """Overwrites dead codes (ema_count < threshold) with random valid frames (§2.6).

    Frames are drawn without replacement, uniformly among the valid frames of the global batch;
    dead codes are served in index order. When there are more dead codes than valid frames, the
    surplus codes stay as they are until a later restart. A restarted code gets ema_count 1 and
    ema_weight = its new vector.

    Args:
      state: the codebook state.
      x: [..., D] pre-quantization frames of this shard (gradients are stopped).
      mask: [...] valid frames of this shard.
      key: PRNG key, the same on every shard.
      threshold: dead-code threshold, 1 * decay**restart_interval in the reference.
      axis_name: data-parallel axis (inside shard_map/vmap), or None for global arrays.

    Returns:
      (new state, number of restarted codes).
    """
    num_codes, dim = state.codebook.shape
    x = jax.lax.stop_gradient(x).astype(jnp.float32).reshape(-1, dim)  # (N, D)
    valid = mask.reshape(-1).astype(bool)  # (N,)
    local_n = valid.shape[0]
    # Random order of the global batch; only scalars cross shards.
    all_valid = valid if axis_name is None else jax.lax.all_gather(valid, axis_name, tiled=True)
    scores = jnp.where(all_valid, jax.random.uniform(key, all_valid.shape), jnp.inf)
    rank = jnp.argsort(jnp.argsort(scores))  # rank of each global frame; valid frames first
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_n
    rank = jax.lax.dynamic_slice_in_dim(rank, offset, local_n)  # (N,) this shard's frames
    num_valid = jnp.sum(all_valid)

    dead = state.ema_count < threshold  # (C,)
    dead_rank = jnp.cumsum(dead) - 1  # (C,) position of each dead code among the dead ones
    num_dead = jnp.sum(dead)
    dead_codes = jnp.nonzero(dead, size=num_codes, fill_value=num_codes)[0]  # (C,) dead first
    chosen = valid & (rank < num_dead)
    target = jnp.where(chosen, dead_codes[jnp.clip(rank, 0, num_codes - 1)], num_codes)  # (N,)
    # Each dead code receives at most one frame, so a segment sum is a scatter.
    new_vectors = jax.ops.segment_sum(x, target, num_segments=num_codes + 1)[:num_codes]
    new_vectors = _psum(new_vectors, axis_name)  # (C, D)
    take = dead & (dead_rank < num_valid)  # (C,)
    codebook = jnp.where(take[:, None], new_vectors.astype(state.codebook.dtype), state.codebook)
    ema_count = jnp.where(take, 1.0, state.ema_count)
    ema_weight = jnp.where(take[:, None], new_vectors, state.ema_weight)
    return VQState(codebook, ema_count, ema_weight), jnp.sum(take)


class VectorQuantizer(nnx.Module):
    """The VQ bottleneck: codebook lookup, straight-through output, EMA training rule.

    Call with ``train=True`` inside the (jitted) train step: it quantizes with the current
    codebook, then updates the EMA state in place (as the reference does in its forward), and
    every ``restart_interval`` EMA steps restarts dead codes with ``restart_key``.
    """

    def __init__(
        self,
        codebook_size: int,
        embed_dim: int,
        *,
        ema_decay: float | None = 0.99,
        commit_coef: float = 0.25,
        loss_scale: float = 40.0,
        restart_interval: int | None = 100,
        init_std: float = 0.02,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if codebook_size < 1 or embed_dim < 1:
            raise ValueError(
                f"codebook_size ({codebook_size}) and embed_dim ({embed_dim}) must be positive"
            )
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay ({ema_decay}) must be in (0, 1), or None for no EMA")
        if restart_interval is not None and restart_interval < 1:
            raise ValueError(f"restart_interval ({restart_interval}) must be >= 1 or None")
        self.ema_decay = ema_decay
        self.commit_coef = commit_coef
        self.loss_scale = loss_scale
        self.restart_interval = restart_interval if ema_decay is not None else None
        axes = ("codebook", "embed")
        init = nnx.with_partitioning(nnx.initializers.normal(init_std), axes, eager_sharding=False)
        value = init(rngs.params(), (codebook_size, embed_dim), param_dtype)
        if ema_decay is None:
            self.codebook = nnx.Param(value)
            return
        self.codebook = VQStats(value)
        self.ema_count = VQStats(
            jnp.ones((codebook_size,), jnp.float32),
            out_sharding=("codebook",),
            eager_sharding=False,
        )
        self.ema_weight = VQStats(
            self.codebook[...].astype(jnp.float32), out_sharding=axes, eager_sharding=False
        )
        self.ema_steps = VQStats(jnp.zeros((), jnp.int32))

    @property
    def uses_ema(self) -> bool:
        return self.ema_decay is not None

    def get_state(self) -> VQState:
        """The current EMA state (EMA mode only)."""
        return VQState(self.codebook[...], self.ema_count[...], self.ema_weight[...])

    def set_state(self, state: VQState) -> None:
        self.codebook[...] = state.codebook
        self.ema_count[...] = state.ema_count
        self.ema_weight[...] = state.ema_weight

    def set_codebook(self, vectors: jax.Array) -> None:
        """Replaces the codebook (e.g. a data-dependent or k-means init) and resets the EMA."""
        expected = self.codebook[...].shape
        if tuple(vectors.shape) != tuple(expected):
            raise ValueError(
                f"codebook init has shape {vectors.shape}; the quantizer needs {expected}"
            )
        self.codebook[...] = vectors.astype(self.codebook[...].dtype)
        if self.uses_ema:
            self.ema_count[...] = jnp.ones_like(self.ema_count[...])
            self.ema_weight[...] = vectors.astype(jnp.float32)

    def lookup(self, ids: jax.Array) -> jax.Array:
        """[...] ids -> [..., D] code vectors."""
        return jnp.take(self.codebook[...], ids, axis=0)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array,
        *,
        train: bool = False,
        restart_key: jax.Array | None = None,
        axis_name: str | None = None,
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Quantizes frames.

        Args:
          x: [B, T, D] pre-quantization frames.
          mask: [B, T] valid frames.
          train: straight-through output, loss, and (EMA mode) the in-place EMA update.
          restart_key: PRNG key for dead-code restarts; required when training with restarts.
          axis_name: data-parallel axis for statistics inside shard_map/vmap, or None.

        Returns:
          (output [B, T, D] in x's dtype, ids [B, T] int32, aux) where aux holds ``vq_loss``
          (0 at inference), and when training ``num_active_codes`` and ``codes_restarted``.
        """
        codebook = self.codebook[...]
        ids, q = nearest_codes(x, codebook)
        if not train:
            return q.astype(x.dtype), ids, {"vq_loss": jnp.zeros((), jnp.float32)}
        commit = masked_mse(x, jax.lax.stop_gradient(q), mask, axis_name)
        aux: dict[str, jax.Array] = {}
        if self.uses_ema:
            loss = self.loss_scale * self.commit_coef * commit
            aux["num_active_codes"], aux["codes_restarted"] = self._update(
                x, ids, mask, restart_key, axis_name
            )
        else:
            codebook_term = masked_mse(q, jax.lax.stop_gradient(x), mask, axis_name)
            loss = self.loss_scale * (self.commit_coef * commit + codebook_term)
            n = code_counts(ids, mask, codebook.shape[0], axis_name)
            aux["num_active_codes"] = jnp.sum(n > 0)
            aux["codes_restarted"] = jnp.zeros((), jnp.int32)
        aux["vq_loss"] = loss
        return straight_through(x, q), ids, aux

    def _update(self, x, ids, mask, restart_key, axis_name):
        state, n = ema_update(
            self.get_state(), x, ids, mask, decay=self.ema_decay, axis_name=axis_name
        )
        steps = self.ema_steps[...] + 1
        self.ema_steps[...] = steps
        restarted = jnp.zeros((), jnp.int32)
        if self.restart_interval is not None:
            if restart_key is None:
                raise ValueError(
                    "VectorQuantizer(train=True) with restart_interval set needs restart_key; pass "
                    "a PRNG key (the same on every data shard) or set restart_interval=None"
                )
            threshold = float(self.ema_decay**self.restart_interval)
            key = jax.random.fold_in(restart_key, steps)

            def restart(s):
                return restart_dead_codes(s, x, mask, key, threshold=threshold, axis_name=axis_name)

            def keep(s):
                return s, jnp.zeros((), jnp.int32)

            due = steps % self.restart_interval == 0
            state, restarted = jax.lax.cond(due, restart, keep, state)
            restarted = restarted.astype(jnp.int32)
        self.set_state(state)
        return jnp.sum(n > 0), restarted
