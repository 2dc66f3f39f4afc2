"""Training of the flow: the release's conditional-flow-matching loss and a padded-batch sampler.

Ref: decoder.md §15.1 (GLM ``MaskedDiffWithXvec.forward`` + ``ConditionalCFM.compute_loss``):

* time t ~ U(0, 1) through the cosine schedule t ← 1 - cos(πt/2);
* interpolant y = (1 - (1 - σ)t)·z + t·x₁ and target u = x₁ - (1 - σ)·z, σ = ``sigma_min``;
* classifier-free-guidance dropout: with p = ``training_cfg_rate`` (0.2) a row's (mu, spks, cond)
  are zeroed together;
* prompt: with p = 0.5 no prompt, else a prefix of U{0..⌊0.8·T⌋} frames of the row's target mel
  goes into ``cond``;
* loss = MSE summed over the valid frames and divided by (Σmask · M); prompt frames included
  (``only_mask_loss`` / ``reg_loss_type`` of the config are ignored upstream as well).

The speaker input is the zero x-vector GLM always feeds (spks = the affine bias, §12.4). Every
batch row is computed as if alone: ``Flow.mu_padded`` and the estimator's ``hard_mask`` make
padding neutral, so a padded batch gives each row the loss (and the sample) it has unpadded.

Axes: B batch, N tokens, T frames, M mel bins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from glmvoice_jax.models.speech_decoder.flow import Flow, euler_cfg

PROMPT_PROB = 0.5  # rows trained without a prompt
PROMPT_MAX_FRAC = 0.8  # prompt prefix of U{0..⌊0.8·T⌋} frames


def cfm_loss(
    flow: Flow,
    tokens: jax.Array,
    token_valid: jax.Array,
    mel: jax.Array,
    frame_mask: jax.Array,
    key: jax.Array,
    *,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The CFM loss of one batch (§15.1).

    Args:
      flow: the model.
      tokens: (B, N) int ids.
      token_valid: (B, N) bool, a prefix per row.
      mel: (B, T, M) target log-mel x₁ (any value at padding).
      frame_mask: (B, T) float 0/1 (a prefix per row; all-zero rows add nothing).
      key: PRNG key of this batch (time, noise, prompt, CFG dropout, encoder dropout).
      train: encoder dropout on (False: held-out losses, the same draws otherwise).

    Returns:
      (loss, {"frames": Σmask, "row_sq_err": (B,) squared error summed per row,
      "prompt_frac": prompted frames / frames, "cfg_dropped": rows}).
    """
    cfg = flow.cfg
    b, t_len, m = mel.shape
    k_t, k_z, k_use, k_len, k_cfg, k_drop = jax.random.split(key, 6)
    mask = frame_mask.astype(jnp.float32)[:, :, None]  # (B, T, 1)
    x1 = mel * mask
    frames = jnp.sum(frame_mask, axis=1)  # (B,)

    t = jax.random.uniform(k_t, (b,), jnp.float32)
    t = 1.0 - jnp.cos(t * 0.5 * jnp.pi)
    z = jax.random.normal(k_z, x1.shape, jnp.float32)
    sigma = jnp.float32(cfg.sigma_min)
    tt = t[:, None, None]
    y = (1.0 - (1.0 - sigma) * tt) * z + tt * x1
    u = x1 - (1.0 - sigma) * z

    # Prompt: a random prefix of the target goes into cond for half of the rows.
    use = jax.random.uniform(k_use, (b,)) >= PROMPT_PROB
    top = jnp.floor(PROMPT_MAX_FRAC * frames)  # U{0..top}
    plen = jnp.floor(jax.random.uniform(k_len, (b,)) * (top + 1.0)) * use
    prompt = (jnp.arange(t_len)[None, :] < plen[:, None]).astype(jnp.float32)[:, :, None]
    cond = x1 * prompt

    spks = flow.speaker(jnp.zeros((b, cfg.spk_embed_dim), jnp.float32))  # (B, M)
    mu = flow.mu_padded(tokens, token_valid, mask, k_drop if train else None)
    keep = (jax.random.uniform(k_cfg, (b,)) >= cfg.training_cfg_rate).astype(jnp.float32)
    mu, cond = mu * keep[:, None, None], cond * keep[:, None, None]
    spks = spks * keep[:, None]

    pred = flow.estimator(y, mask, mu, t, spks, cond, hard_mask=True)  # (B, T, M)
    total = jnp.sum(frames)
    row_sq_err = jnp.sum(jnp.square(pred - u) * mask, axis=(1, 2))  # (B,)
    loss = jnp.sum(row_sq_err) / jnp.maximum(total * m, 1.0)
    aux = {
        "frames": total,
        "row_sq_err": row_sq_err,
        "prompt_frac": jnp.sum(plen) / jnp.maximum(total, 1.0),
        "cfg_dropped": jnp.sum(1.0 - keep),
    }
    return loss, aux


def sample(
    flow: Flow,
    tokens: jax.Array,
    token_valid: jax.Array,
    frame_mask: jax.Array,
    noise: jax.Array | None = None,
) -> jax.Array:
    """Mel of a padded batch by the inference ODE (§7: Euler, cosine steps, CFG), no prompt.

    Equals ``Flow.inference`` on each row alone (up to float rounding); used for held-out mel
    distances inside training, where per-length compiles would cost too much.

    Args:
      flow: the model.
      tokens: (B, N) ids.
      token_valid: (B, N) bool.
      frame_mask: (B, T) 0/1 valid frames (T = frames_from_tokens of the row's tokens).
      noise: (B, T, M) initial z; None → zeros (the deterministic mode, §14).

    Returns:
      (B, T, M), zero at padded frames.
    """
    cfg = flow.cfg
    b, t_len = frame_mask.shape
    mask = frame_mask.astype(jnp.float32)[:, :, None]
    mu = flow.mu_padded(tokens, token_valid, mask)
    spks = flow.speaker(jnp.zeros((b, cfg.spk_embed_dim), jnp.float32))
    z = jnp.zeros((b, t_len, cfg.output_size), jnp.float32) if noise is None else noise
    mel = euler_cfg(
        flow.estimator,
        z * mask,
        mask,
        mu,
        spks,
        jnp.zeros_like(mu),
        cfg.n_timesteps,
        cfg.inference_cfg_rate,
        hard_mask=True,
    )
    return mel * mask
