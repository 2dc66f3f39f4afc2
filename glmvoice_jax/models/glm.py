"""GLM-4 decoder (the GLM-4-9B / GLM-4-Voice-9B backbone) in Flax NNX.

Ref: THUDM modeling_chatglm.py (GLM-4 remote code, glm4voice.md §4.2 [MC]) and transformers
``models/glm/modeling_glm.py``. Math, exactly as the reference:
  * fused QKV with bias (stored here as separate q/k/v leaves so each shards by heads), GQA;
  * rotary on the first ``rotary_fraction`` of each head's dims, adjacent pairs (2i, 2i+1) rotated
    (GPT-J style), base 10000 * rope_ratio; positions restart per packed document;
  * RMSNorm with float32 statistics, the normalised value cast back before the weight multiply;
  * SwiGLU with [gate | up] halves, no biases outside QKV; untied output head;
  * attention softmax in float32 (see attention.py);
  * optional hidden dropout (chatglm ``hidden_dropout``; stage-2 SFT uses 0.5, glm4voice.md §8)
    on each block's attention and MLP outputs before the residual add, only when
    ``hidden_states`` gets a ``dropout_key`` (the train step); eval, scoring and ``decode`` never
    drop. With ``dropout = 0`` (the default) the key is ignored and the graph is unchanged.

Parameter names follow glm4voice.md §4.6 (embed.embedding, layers.attn.q.kernel, ...). Layers are
always stored stacked with a leading ``layers`` axis; ``scan_layers`` only chooses between
``nnx.scan`` and an unrolled Python loop over slices, so checkpoints do not depend on it.

Axes: B batch, T length, D embed, F mlp, N query heads, K kv heads, H head dim, V vocab, R rotary
dims.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from glmvoice_jax import sharding
from glmvoice_jax.models import attention, fused_attention, matmul

ACT = ("act_batch", "act_len", "act_embed")

# What each block keeps from its forward pass for the backward pass (the rest is recomputed).
# "offload" keeps what "dots_no_batch" keeps (the weight-matmul outputs), but in pinned host
# memory instead of HBM; the backward pass streams it back (docs/aot.md: on v5p it turns 64 GiB
# of HBM into 20 GiB plus 44 GiB of host memory). On CPU, host memory is device memory, so it
# runs and behaves exactly like "dots_no_batch".
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims(
        offload_src="device", offload_dst="pinned_host"
    ),
}
HOST_OFFLOAD_POLICIES = frozenset({"offload"})

# Attention implementations, same math: portable ("xla", "chunked") and fused per backend.
ATTENTION_IMPLS = ("xla", "chunked", "causal_blocks") + fused_attention.FUSED


def check_remat_policy(name: str, devices: Sequence[jax.Device]) -> None:
    """Checks that ``devices`` can run the preset: the offload presets need pinned host memory.

    Called on the mesh's devices before the step is traced (inside a trace the devices are not
    known). CPU devices pass: their "pinned host" memory is ordinary memory.

    Raises:
      ValueError: an unknown preset, or an offload preset on devices without pinned host memory.
    """
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {name!r}; known: {sorted(REMAT_POLICIES)}")
    if name not in HOST_OFFLOAD_POLICIES:
        return
    device = devices[0]
    kinds = sorted({m.kind for m in device.addressable_memories()})
    if "pinned_host" not in kinds:
        raise ValueError(
            f"remat_policy {name!r} offloads saved matmul outputs to pinned host memory, but "
            f"{device.platform} devices ({device.device_kind}) have only the memory kinds {kinds}; "
            "use remat_policy 'dots_no_batch' (the same values, kept in device memory) or 'full'"
        )


@dataclasses.dataclass(frozen=True)
class GLMConfig:
    """Hyperparameters of a GLM-4 decoder.

    Attributes:
      vocab_size: rows of the embedding and of the output head (padded vocab).
      embed_dim: model width D (chatglm ``hidden_size``).
      num_layers: number of GLM blocks.
      num_heads: query heads N.
      num_kv_heads: key/value heads K (chatglm ``multi_query_group_num``).
      head_dim: H (chatglm ``kv_channels``).
      mlp_dim: F, the SwiGLU inner width (chatglm ``ffn_hidden_size``).
      rope_ratio: RoPE base is 10000 * rope_ratio.
      rotary_fraction: fraction of each head's dims that get rotary (GLM-4: 0.5).
      norm_eps: RMSNorm epsilon (chatglm ``layernorm_epsilon``).
      qkv_bias: bias on q/k/v (chatglm ``add_qkv_bias``).
      init_std: stddev of the normal initializer of kernels and embeddings.
      param_dtype: dtype parameters are stored in.
      dtype: compute dtype of matmuls and activations (softmax, norms and loss stay float32).
      scan_layers: run layers with nnx.scan (True) or an unrolled loop (same parameters).
      remat_policy: one of REMAT_POLICIES ("offload" needs devices with pinned host memory:
        ``check_remat_policy``).
      attention_impl: ``model.attention_impl``, one of ATTENTION_IMPLS: "xla", "chunked" or
        "causal_blocks" (attention.py, any backend), or the fused kernels (fused_attention.py)
        "splash" (TPU) and "cudnn" (GPU, bf16/fp16 compute), which check the backend when the
        step is traced.
      attention_chunk: query block of the chunked attentions.
      dropout: hidden dropout rate in [0, 1) (module docstring); 0 = off.
    """

    vocab_size: int
    embed_dim: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rope_ratio: float = 1.0
    rotary_fraction: float = 0.5
    norm_eps: float = 1.5625e-07
    qkv_bias: bool = True
    init_std: float = 0.02
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "full"
    attention_impl: str = "xla"
    attention_chunk: int = 512
    dropout: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        rot = self.rotary_dim
        if rot % 2 or rot > self.head_dim:
            raise ValueError(
                f"rotary dims ({rot} = head_dim {self.head_dim} * rotary_fraction "
                f"{self.rotary_fraction}) must be even and at most head_dim"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"unknown remat_policy {self.remat_policy!r}; known: {sorted(REMAT_POLICIES)}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"model.attention_impl must be one of {', '.join(ATTENTION_IMPLS)} ('splash' on "
                f"TPU, 'cudnn' on GPU), not {self.attention_impl!r}"
            )
        if self.attention_impl == "cudnn" and self.dtype == "float32":
            raise ValueError(
                "model.attention_impl='cudnn' needs model.dtype bfloat16 or float16 (cuDNN flash "
                "attention has no float32 kernel), got 'float32'; use 'xla' or 'chunked' in float32"
            )
        for f in ("param_dtype", "dtype"):
            if getattr(self, f) not in ("float32", "bfloat16", "float16"):
                raise ValueError(
                    f"{f} must be float32, bfloat16 or float16, not {getattr(self, f)!r}"
                )

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    def param_count(self) -> int:
        """Exact parameter count (glm4voice.md §4.3)."""
        d, n, k, h, f, v = (
            self.embed_dim,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.mlp_dim,
            self.vocab_size,
        )
        qkv = d * (n + 2 * k) * h + ((n + 2 * k) * h if self.qkv_bias else 0)
        per_layer = qkv + n * h * d + 3 * d * f + 2 * d
        return self.num_layers * per_layer + d + 2 * v * d

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * (params that do matmuls) + causal attention.

        Matmul params exclude the input embedding (a gather). Attention counts QK^T and PV over a
        causal half of the row: 2 matmuls * 2 flops * 3 (fwd + bwd) * (T / 2) * N * H per layer.
        """
        matmul_params = self.param_count() - self.vocab_size * self.embed_dim
        attn = 6.0 * self.num_layers * self.num_heads * self.head_dim * seq_len
        return 6.0 * matmul_params + attn


VARIANTS: dict[str, GLMConfig] = {
    # The CPU demo / test model: byte-level text + 512 speech codes (token_layout "demo").
    "tiny": GLMConfig(
        vocab_size=1024,
        embed_dim=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mlp_dim=352,
    ),
    # THUDM/glm-4-9b: 9,399,951,360 parameters.
    "glm4_9b": GLMConfig(
        vocab_size=151552,
        embed_dim=4096,
        num_layers=40,
        num_heads=32,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=13696,
        norm_eps=1.5625e-07,
    ),
    # THUDM/glm-4-voice-9b: 9,542,557,696 parameters (glm4voice.md §4.3).
    "glm4_voice_9b": GLMConfig(
        vocab_size=168960,
        embed_dim=4096,
        num_layers=40,
        num_heads=32,
        num_kv_heads=2,
        head_dim=128,
        mlp_dim=13696,
        norm_eps=3.90625e-08,
    ),
}


def _param(rngs, init, shape, axes, dtype):
    # Not eagerly sharded: models also run outside a mesh (scoring, tests); the trainer places
    # parameters by jitting the constructor with out_shardings (sharding.init_sharded).
    init = nnx.with_partitioning(init, axes, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = _param(rngs, nnx.initializers.ones, (dim,), ("norm",), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return self.scale[...].astype(x.dtype) * normed


class _Proj(nnx.Module):
    """A kernel (and optional bias) with logical axes; applied by einsum in the caller."""

    def __init__(self, shape, axes, bias_shape=None, bias_axes=None, *, cfg: GLMConfig, rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.kernel = _param(rngs, nnx.initializers.normal(cfg.init_std), shape, axes, pd)
        if bias_shape is not None:
            self.bias = _param(rngs, nnx.initializers.zeros, bias_shape, bias_axes, pd)
        else:
            self.bias = None


def rotary_tables(positions: jax.Array, cfg: GLMConfig) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape [B, T, R/2] in float32 (glm4voice.md §12 #19)."""
    r = cfg.rotary_dim
    base = 10000.0 * cfg.rope_ratio
    inv_freq = 1.0 / (base ** (jnp.arange(0, r, 2, dtype=jnp.float32) / r))  # (R/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, R/2)
    return jnp.cos(angles), jnp.sin(angles)


@jax.custom_vjp
def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates adjacent pairs (2i, 2i+1) of the first R dims of x [B, T, heads, H].

    The backward pass is the inverse rotation (sin negated), the same fused elementwise op as the
    forward; autodiff's transpose of the slices, stack and concatenate cost about twice as much
    on CPU (bench/train_step.py). Positions carry no gradient.
    """
    return _rotate(x, cos, sin)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    r = cos.shape[-1] * 2
    rot, rest = x[..., :r], x[..., r:]
    pairs = rot.astype(jnp.float32).reshape(*rot.shape[:-1], r // 2, 2)  # (B, T, heads, R/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]  # (B, T, 1, R/2)
    out = jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1).reshape(rot.shape)
    return jnp.concatenate([out.astype(x.dtype), rest], axis=-1)


def _rotary_fwd(x, cos, sin):
    return _rotate(x, cos, sin), (cos, sin)


def _rotary_bwd(res, g):
    cos, sin = res
    return _rotate(g, cos, -sin), None, None


apply_rotary.defvjp(_rotary_fwd, _rotary_bwd)


class GLMAttention(nnx.Module):
    def __init__(self, cfg: GLMConfig, *, rngs: nnx.Rngs):
        d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b = cfg.qkv_bias
        self.cfg = cfg
        self.q = _Proj(
            (d, n, h),
            ("embed", "heads", "head_dim"),
            (n, h) if b else None,
            ("heads", "head_dim"),
            cfg=cfg,
            rngs=rngs,
        )
        self.k = _Proj(
            (d, k, h),
            ("embed", "kv_heads", "head_dim"),
            (k, h) if b else None,
            ("kv_heads", "head_dim"),
            cfg=cfg,
            rngs=rngs,
        )
        self.v = _Proj(
            (d, k, h),
            ("embed", "kv_heads", "head_dim"),
            (k, h) if b else None,
            ("kv_heads", "head_dim"),
            cfg=cfg,
            rngs=rngs,
        )
        self.out = _Proj((n, h, d), ("heads", "head_dim", "embed"), cfg=cfg, rngs=rngs)

    def _qkv(self, x, cos, sin):
        """Projections with rotary on q and k: (B, T, N, H), (B, T, K, H), (B, T, K, H)."""
        dt = x.dtype

        def proj(p: _Proj):
            y = matmul.einsum("BTD,DKH->BTKH", x, p.kernel[...].astype(dt))
            return y if p.bias is None else y + p.bias[...].astype(dt)

        return (
            apply_rotary(proj(self.q), cos, sin),
            apply_rotary(proj(self.k), cos, sin),
            proj(self.v),
        )

    def __call__(self, x, segment_ids, cos, sin):
        dt = x.dtype
        q, k, v = self._qkv(x, cos, sin)
        impl = self.cfg.attention_impl
        if impl == "splash":
            o = fused_attention.splash_attention(q, k, v, segment_ids)
        elif impl == "cudnn":
            o = fused_attention.cudnn_attention(q, k, v, segment_ids)
        else:
            o = attention.dot_product_attention(
                q, k, v, segment_ids, impl=impl, chunk_size=self.cfg.attention_chunk
            )
        return matmul.einsum("BTNH,NHD->BTD", o, self.out.kernel[...].astype(dt))

    def decode(self, x, cos, sin, k_cache, v_cache, index):
        """Cached step: x [B, T, D] at slots index[b] + t; caches [B, S, K, H] -> updated."""
        dt = x.dtype
        q, k, v = self._qkv(x, cos, sin)
        k, v = k.astype(k_cache.dtype), v.astype(v_cache.dtype)

        def write(cache, new, i):
            return jax.lax.dynamic_update_slice(cache, new, (i, 0, 0))

        k_cache = jax.vmap(write)(k_cache, k, index)
        v_cache = jax.vmap(write)(v_cache, v, index)
        b, t, n, h = q.shape
        kh, s = k_cache.shape[2], k_cache.shape[1]
        slot = index[:, None] + jnp.arange(t)[None]  # (B, T) cache slot of each query
        mask = jnp.arange(s)[None, None, :] <= slot[:, :, None]  # (B, T, S)
        qg = q.reshape(b, t, kh, n // kh, h)  # (B, T, K, G, H)
        o = attention._attend(qg, k_cache.astype(dt), v_cache.astype(dt), mask, h**-0.5)
        o = o.reshape(b, t, n, h)
        out = matmul.einsum("BTNH,NHD->BTD", o, self.out.kernel[...].astype(dt))
        return out, k_cache, v_cache


class GLMMLP(nnx.Module):
    def __init__(self, cfg: GLMConfig, *, rngs: nnx.Rngs):
        d, f = cfg.embed_dim, cfg.mlp_dim
        self.gate = _Proj((d, f), ("embed", "mlp"), cfg=cfg, rngs=rngs)
        self.up = _Proj((d, f), ("embed", "mlp"), cfg=cfg, rngs=rngs)
        self.down = _Proj((f, d), ("mlp", "embed"), cfg=cfg, rngs=rngs)

    def __call__(self, x):
        dt = x.dtype
        a = matmul.einsum("BTD,DF->BTF", x, self.gate.kernel[...].astype(dt))
        b = matmul.einsum("BTD,DF->BTF", x, self.up.kernel[...].astype(dt))
        return matmul.einsum("BTF,FD->BTD", jax.nn.silu(a) * b, self.down.kernel[...].astype(dt))


def hidden_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout of x [B, T, D]: zero with probability ``rate``, scale the rest.

    The mask is drawn under the activations' sharding: with ``jax_threefry_partitionable`` (on by
    default since jax 0.5) each device generates only its own slice of the bits, so no
    full-size key or mask is materialised on one device.
    """
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)  # (B, T, D)
    keep = sharding.constrain(keep, ACT)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class GLMBlock(nnx.Module):
    def __init__(self, cfg: GLMConfig, *, rngs: nnx.Rngs):
        pd = jnp.dtype(cfg.param_dtype)
        self.dropout = cfg.dropout
        self.attn_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps, param_dtype=pd, rngs=rngs)
        self.attn = GLMAttention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps, param_dtype=pd, rngs=rngs)
        self.mlp = GLMMLP(cfg, rngs=rngs)

    def __call__(self, x, segment_ids, cos, sin, key=None):
        """key: this layer's dropout key (None: no dropout)."""
        h = self.attn(self.attn_norm(x), segment_ids, cos, sin)
        if key is not None:
            h = hidden_dropout(h, self.dropout, jax.random.fold_in(key, 0))
        x = x + h
        h = self.mlp(self.mlp_norm(x))
        if key is not None:
            h = hidden_dropout(h, self.dropout, jax.random.fold_in(key, 1))
        x = x + h
        return sharding.constrain(x, ACT)

    def decode(self, x, cos, sin, k_cache, v_cache, index):
        h, k_cache, v_cache = self.attn.decode(self.attn_norm(x), cos, sin, k_cache, v_cache, index)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, k_cache, v_cache


class Embedding(nnx.Module):
    def __init__(self, cfg: GLMConfig, *, rngs: nnx.Rngs):
        self.embedding = _param(
            rngs,
            nnx.initializers.normal(cfg.init_std),
            (cfg.vocab_size, cfg.embed_dim),
            ("vocab", "embed"),
            jnp.dtype(cfg.param_dtype),
        )


class GLMDecoder(nnx.Module):
    """Token ids -> hidden states / logits. See the module docstring for the math."""

    def __init__(self, cfg: GLMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        self.embed = Embedding(cfg, rngs=rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_layers(rngs):
            return GLMBlock(cfg, rngs=rngs)

        self.layers = make_layers(rngs)
        self.final_norm = RMSNorm(cfg.embed_dim, cfg.norm_eps, param_dtype=pd, rngs=rngs)
        self.head = _Proj((cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), cfg=cfg, rngs=rngs)

    def hidden_states(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """[B, T] ids -> [B, T, D] final-normed hidden states (compute dtype).

        segment_ids: [B, T] (0 = padding; default: one document per row).
        positions: [B, T] per-document positions (default: 0..T-1).
        dropout_key: a typed PRNG key (training only): hidden dropout at ``cfg.dropout``, layer
            l's key ``fold_in(dropout_key, l)``. None, or ``cfg.dropout == 0``: no dropout.
        """
        cfg = self.cfg
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        dt = jnp.dtype(cfg.dtype)
        x = jnp.take(self.embed.embedding[...], tokens, axis=0).astype(dt)  # (B, T, D)
        x = sharding.constrain(x, ACT)
        cos, sin = rotary_tables(positions, cfg)
        policy = REMAT_POLICIES[cfg.remat_policy]

        if dropout_key is not None and cfg.dropout > 0:
            keys = jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(
                jnp.arange(cfg.num_layers)
            )  # (L,) one key per layer; remat recomputes the same masks
            return self.final_norm(self._blocks_with_dropout(x, segment_ids, cos, sin, keys))

        def body(x, block):
            return block(x, segment_ids, cos, sin)

        if cfg.remat_policy != "none":
            body = nnx.remat(body, policy=policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            run = nnx.scan(
                body,
                in_axes=(nnx.Carry, 0),
                out_axes=nnx.Carry,
                transform_metadata={nnx.PARTITION_NAME: "layers"},
            )
            x = run(x, self.layers)
        else:
            graphdef, state = nnx.split(self.layers)
            for i in range(cfg.num_layers):
                block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
                x = body(x, block)
        return self.final_norm(x)

    def _blocks_with_dropout(self, x, segment_ids, cos, sin, keys):
        """The layer stack of ``hidden_states`` with layer l's dropout key keys[l]."""
        cfg = self.cfg

        def body(x, block, key):
            return block(x, segment_ids, cos, sin, key)

        if cfg.remat_policy != "none":
            policy = REMAT_POLICIES[cfg.remat_policy]
            body = nnx.remat(body, policy=policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            run = nnx.scan(
                body,
                in_axes=(nnx.Carry, 0, 0),
                out_axes=nnx.Carry,
                transform_metadata={nnx.PARTITION_NAME: "layers"},
            )
            return run(x, self.layers, keys)
        graphdef, state = nnx.split(self.layers)
        for i in range(cfg.num_layers):
            block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
            x = body(x, block, keys[i])
        return x

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, V] float32 logits (untied head)."""
        w = self.head.kernel[...].astype(hidden.dtype)
        return matmul.einsum("BTD,DV->BTV", hidden, w, out_dtype=jnp.float32)

    def __call__(self, tokens, segment_ids=None, positions=None) -> jax.Array:
        return self.logits(self.hidden_states(tokens, segment_ids, positions))

    def init_cache(self, batch: int, max_len: int) -> dict[str, jax.Array]:
        """Empty KV cache for ``decode``: k, v of shape [L, B, S, K, H] in the compute dtype."""
        c = self.cfg
        shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
        return {"k": jnp.zeros(shape, c.dtype), "v": jnp.zeros(shape, c.dtype)}

    def decode(
        self, tokens: jax.Array, cache: dict[str, jax.Array], index: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Incremental forward with a KV cache (prefill and sampling).

        Args:
          tokens: [B, T] new tokens of each row, at positions index[b] .. index[b] + T - 1 (one
            document per row; rows may be at different positions).
          cache: from ``init_cache``; slots >= index[b] of row b are ignored until written.
          index: [B] int32, tokens already in the cache for each row.

        Returns:
          (float32 logits [B, T, V], updated cache).
        """
        cfg = self.cfg
        t = tokens.shape[1]
        positions = index[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # (B, T)
        x = jnp.take(self.embed.embedding[...], tokens, axis=0).astype(jnp.dtype(cfg.dtype))
        cos, sin = rotary_tables(positions, cfg)

        def body(x, block, k_cache, v_cache):
            return block.decode(x, cos, sin, k_cache, v_cache, index)

        run = nnx.scan(body, in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0, 0))
        x, k, v = run(x, self.layers, cache["k"], cache["v"])
        return self.logits(self.final_norm(x)), {"k": k, "v": v}
