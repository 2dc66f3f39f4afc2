"""Tokens → log-mel by conditional flow matching (``MaskedDiffWithXvec.inference``).

Ref: decoder.md §3 (data flow), §5 (length regulator), §7 (Euler solver with CFG), §14
(deterministic mode); GLM-4-Voice @ eb00ce9 ``cosyvoice/flow/{flow,flow_matching,
length_regulator}.py``. Parameter names follow it (``input_embedding``, ``spk_embed_affine_layer``,
``encoder_proj``, ``length_regulator``, ``estimator``).

Axes: B batch, N tokens (prompt + new), T mel frames (prompt + new), P prompt frames, M mel bins,
D encoder width, S speaker-embedding width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from glmvoice_jax.models.speech_decoder.config import FlowConfig
from glmvoice_jax.models.speech_decoder.encoder import TokenEncoder
from glmvoice_jax.models.speech_decoder.estimator import ConditionalUNet1D
from glmvoice_jax.models.speech_decoder.layers import (
    Conv1d,
    frames_from_tokens,
    group_norm,
    linear,
    mish,
    nearest_resize,
    nearest_resize_lengths,
    partitioned,
)


class LengthRegulator(nnx.Module):
    """``InterpolateRegulator``: nearest resize N → T, [Conv_k3 → GN1 → Mish] × R, Conv_k1 (§5)."""

    def __init__(self, channels: int, num_stages: int, *, rngs: nnx.Rngs):
        self.convs = nnx.List(
            [Conv1d(channels, channels, 3, padding=1, rngs=rngs) for _ in range(num_stages)]
        )
        self.norms = nnx.List([group_norm(1, channels, rngs=rngs) for _ in range(num_stages)])
        self.out_conv = Conv1d(channels, channels, 1, rngs=rngs)

    def __call__(
        self, h: jax.Array, mask: jax.Array, token_lengths: jax.Array | None = None
    ) -> jax.Array:
        """H (B, N, M), mask (B, T, 1) → mu (B, T, M).

        ``token_lengths`` (B,) given (padded training batches): each row is resized from its own
        token count to its own frame count, and every stage is masked with GroupNorm statistics
        over the valid frames, so a padded row equals the unpadded computation. None: the
        reference's unpadded form (inference).
        """
        if token_lengths is None:
            x = nearest_resize(h, mask.shape[1])  # (B, T, M)
            for conv, norm in zip(self.convs, self.norms):
                x = mish(norm(conv(x)))
            return self.out_conv(x) * mask
        frames = jnp.sum(mask[:, :, 0], axis=1).astype(jnp.int32)  # (B,)
        x = nearest_resize_lengths(h, token_lengths, frames, mask.shape[1]) * mask  # (B, T, M)
        valid = jnp.broadcast_to(mask > 0, x.shape)
        for conv, norm in zip(self.convs, self.norms):
            x = mish(norm(conv(x), mask=valid)) * mask
        return self.out_conv(x) * mask


def cosine_t_span(n_steps: int) -> np.ndarray:
    """t_span = 1 - cos(linspace(0, 1, n + 1) · π/2), computed in float32 like the reference."""
    lin = np.linspace(0.0, 1.0, n_steps + 1, dtype=np.float32)
    return (np.float32(1.0) - np.cos(lin * np.float32(0.5) * np.float32(np.pi))).astype(np.float32)


def euler_cfg(
    estimator: ConditionalUNet1D,
    z: jax.Array,
    mask: jax.Array,
    mu: jax.Array,
    spks: jax.Array,
    cond: jax.Array,
    n_steps: int,
    cfg_rate: float,
    hard_mask: bool = False,
    matmul_dtype: str | None = None,
) -> jax.Array:
    """``ConditionalCFM.solve_euler`` with classifier-free guidance (§7).

    Each step evaluates the conditional and the unconditional velocity (mu, spks and cond
    zeroed, x kept) as one batch of 2B, which equals the reference's two calls when unpadded;
    v = (1 + r) v_c - r v_u; x += dt · v. t accumulates (t += dt) and the next dt is
    t_span[step + 1] - t, as in the reference.

    Args:
      estimator: the U-Net.
      z: (B, T, M) initial noise (zeros in deterministic mode).
      mask: (B, T, 1).
      mu: (B, T, M).
      spks: (B, M).
      cond: (B, T, M).
      n_steps: Euler steps (10 in the reference; fewer in the fast mode).
      cfg_rate: r (0.7).
      hard_mask: padding-neutral estimator masks (padded batches of held-out evals).
      matmul_dtype: None = exact float32; "bfloat16" = the opt-in fast mode
        (``TransformerBlock``; its mel distance from exact mode is in docs/decoder_speed.md).

    Returns:
      (B, T, M) the sample at t = 1.
    """
    t_span = jnp.asarray(cosine_t_span(n_steps))
    mask2 = jnp.concatenate([mask, mask], axis=0)  # (2B, T, 1)
    mu2 = jnp.concatenate([mu, jnp.zeros_like(mu)], axis=0)
    spks2 = jnp.concatenate([spks, jnp.zeros_like(spks)], axis=0)
    cond2 = jnp.concatenate([cond, jnp.zeros_like(cond)], axis=0)
    b = z.shape[0]
    r = jnp.float32(cfg_rate)
    graphdef, state = nnx.split(estimator)
    if matmul_dtype is not None:
        # Cast the transformer weights once, outside the loop, instead of in every step.
        state = jax.tree_util.tree_map_with_path(
            lambda path, v: v.astype(matmul_dtype) if _is_block_kernel(path) else v, state
        )

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple:
        x, t, dt = carry
        est = nnx.merge(graphdef, state)
        x2 = jnp.concatenate([x, x], axis=0)
        v = est(
            x2, mask2, mu2, jnp.broadcast_to(t, (2 * b,)), spks2, cond2, hard_mask, matmul_dtype
        )
        v = (jnp.float32(1.0) + r) * v[:b] - r * v[b:]
        x = x + dt * v
        t = t + dt
        dt = t_span[jnp.minimum(i + 1, n_steps)] - t
        return x, t, dt

    carry = (z, t_span[0], t_span[1] - t_span[0])
    x, _, _ = jax.lax.fori_loop(1, n_steps + 1, step, carry)
    return x


def _is_block_kernel(path: tuple) -> bool:
    """A transformer-block ``Linear`` kernel: the matmuls ``matmul_dtype`` applies to."""
    name = jax.tree_util.keystr(path)
    return "transformer_blocks" in name and "kernel" in name


class Flow(nnx.Module):
    """``MaskedDiffWithXvec``: token embedding → encoder → length regulator → CFM."""

    def __init__(self, cfg: FlowConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        m = cfg.output_size
        self.input_embedding = nnx.Embed(
            cfg.vocab_size,
            cfg.input_size,
            embedding_init=partitioned(nnx.initializers.normal(1.0), ("vocab", "embed")),
            rngs=rngs,
        )
        self.spk_embed_affine_layer = linear(cfg.spk_embed_dim, m, (None, None), rngs=rngs)
        self.encoder = TokenEncoder(
            cfg.input_size,
            cfg.encoder_size,
            cfg.encoder_heads,
            cfg.encoder_linear_units,
            cfg.encoder_blocks,
            cfg.encoder_block_size,
            dropout_rate=cfg.encoder_dropout,
            rngs=rngs,
        )
        self.encoder_proj = linear(cfg.encoder_size, m, ("embed", None), rngs=rngs)
        self.length_regulator = LengthRegulator(m, len(cfg.lr_sampling_ratios), rngs=rngs)
        self.estimator = ConditionalUNet1D(
            m,
            cfg.unet_channels,
            cfg.unet_heads,
            cfg.unet_head_dim,
            cfg.unet_n_blocks,
            cfg.unet_mid_blocks,
            rngs=rngs,
        )

    def speaker(self, embedding: jax.Array) -> jax.Array:
        """Spks = Linear(L2-normalised x-vector); GLM's zeros give the affine bias (§3 step 1)."""
        norm = jnp.sqrt(jnp.sum(embedding * embedding, axis=-1, keepdims=True))
        return self.spk_embed_affine_layer(embedding / jnp.maximum(norm, 1e-12))

    def mu(self, tokens: jax.Array, num_frames: int) -> jax.Array:
        """Tokens (B, N) valid ids → mu (B, T, M) for T = num_frames (no padding: B = 1 use)."""
        valid = jnp.ones(tokens.shape, dtype=bool)
        x = self.input_embedding(jnp.maximum(tokens, 0))  # (B, N, D_in)
        h = self.encoder(x, valid)  # (B, N, D)
        h = self.encoder_proj(h)  # (B, N, M)
        mask = jnp.ones((tokens.shape[0], num_frames, 1), jnp.float32)
        return self.length_regulator(h, mask)

    def mu_padded(
        self,
        tokens: jax.Array,
        token_valid: jax.Array,
        frame_mask: jax.Array,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Mu of a padded batch, each row as if alone (training and batched held-out evals).

        Args:
          tokens: (B, N) ids (any value at padding).
          token_valid: (B, N) bool, True on the row's tokens (a prefix).
          frame_mask: (B, T, 1) float 0/1, 1 on the row's frames (a prefix).
          dropout_key: the encoder's dropout key in training; None → eval mode.

        Returns:
          (B, T, M), zero at padded frames.
        """
        x = self.input_embedding(jnp.maximum(tokens, 0))  # (B, N, D_in)
        x = x * token_valid[:, :, None].astype(x.dtype)
        h = self.encoder_proj(self.encoder(x, token_valid, dropout_key))  # (B, N, M)
        lengths = jnp.sum(token_valid, axis=1).astype(jnp.int32)  # (B,)
        return self.length_regulator(h, frame_mask, lengths)

    def inference(
        self,
        tokens: jax.Array,
        prompt_tokens: jax.Array | None = None,
        prompt_feat: jax.Array | None = None,
        noise: jax.Array | None = None,
        embedding: jax.Array | None = None,
        matmul_dtype: str | None = None,
        n_steps: int | None = None,
    ) -> jax.Array:
        """``flow.inference``: mel of the new tokens (§3), channel-last.

        Args:
          tokens: (B, N_new) int ids, already range-checked.
          prompt_tokens: (B, N_prompt) ids of earlier chunks, or None.
          prompt_feat: (B, P, M) mel of earlier chunks copied into ``cond``, or None.
          noise: (B, T, M) initial flow noise z; None → zeros (deterministic mode, §14).
          embedding: (B, S) x-vector; None → zeros (what GLM always passes).
          matmul_dtype: None = exact float32 (default, parity); "bfloat16" = fast mode.
          n_steps: Euler steps on the same cosine t-schedule; None = ``cfg.n_timesteps`` (10,
            the reference and the parity tests). Fewer steps are the opt-in fast mode
            (docs/decoder_speed.md has their mel distance from 10 steps).

        Returns:
          (B, T - P, M) with T = frames_from_tokens(N_prompt + N_new).

        Raises:
          ValueError: ``n_steps`` < 1, or more prompt frames than the tokens give.
        """
        cfg = self.cfg
        if prompt_tokens is not None and prompt_tokens.shape[1] > 0:
            tokens = jnp.concatenate([prompt_tokens, tokens], axis=1)  # (B, N)
        b, n = tokens.shape
        t_frames = frames_from_tokens(n, cfg.input_frame_rate)
        p = 0 if prompt_feat is None else prompt_feat.shape[1]
        if p and p > t_frames:
            raise ValueError(f"prompt_feat has {p} frames but {n} tokens give only {t_frames}")
        cond = jnp.zeros((b, t_frames, cfg.output_size), jnp.float32)
        if p:
            cond = cond.at[:, :p].set(prompt_feat)
        mel = self.sample(tokens, cond, noise, embedding, matmul_dtype, n_steps)
        return mel[:, p:]

    def sample(
        self,
        tokens: jax.Array,
        cond: jax.Array,
        noise: jax.Array | None = None,
        embedding: jax.Array | None = None,
        matmul_dtype: str | None = None,
        n_steps: int | None = None,
    ) -> jax.Array:
        """The flow on all tokens with a given ``cond``: every frame, prompt frames included.

        ``inference`` is this with cond = prompt_feat zero-padded to T, then dropping the P
        prompt frames. Taking cond whole lets ``export.export_stream`` keep a single symbolic
        length (T from N) instead of a prompt length P that it could not relate to T.

        Args:
          tokens: (B, N) ids (prompt + new), already range-checked.
          cond: (B, T, M), T = frames_from_tokens(N): earlier mels, then zeros.
          noise: (B, T, M) initial z; None → zeros (deterministic mode, §14).
          embedding: (B, S) x-vector; None → zeros.
          matmul_dtype: None = exact float32; "bfloat16" = fast mode.
          n_steps: Euler steps; None = ``cfg.n_timesteps`` (10).

        Returns:
          (B, T, M).

        Raises:
          ValueError: ``n_steps`` < 1.
        """
        cfg = self.cfg
        n_steps = cfg.n_timesteps if n_steps is None else n_steps
        if n_steps < 1:
            raise ValueError(f"n_steps must be at least 1 Euler step, got {n_steps}")
        b, t_frames = cond.shape[0], cond.shape[1]
        if embedding is None:
            embedding = jnp.zeros((b, cfg.spk_embed_dim), jnp.float32)
        spks = self.speaker(embedding)  # (B, M)
        mu = self.mu(tokens, t_frames)  # (B, T, M)
        z = jnp.zeros_like(mu) if noise is None else noise
        mask = jnp.ones((b, t_frames, 1), jnp.float32)
        return euler_cfg(
            self.estimator,
            z,
            mask,
            mu,
            spks,
            cond,
            n_steps,
            cfg.inference_cfg_rate,
            matmul_dtype=matmul_dtype,
        )
