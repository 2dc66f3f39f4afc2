"""The generation engine: prefill + KV-cache decode of a GLM decoder on a sharded mesh.

One engine serves every generator of the project: the chat tool (inference/chat.py), the
text-to-token sampler of the interleaved-data synthesis (inference/sampling.py) and the
evaluations. Use::

    eng = engine.Engine.from_checkpoint(CKPT, engine.EngineConfig(dtype="bfloat16"))
    params = engine.SamplingParams(temperature=0.2, top_p=0.8, stop_ids=(stop,),
                                   modality="interleave", max_new_tokens=2000)
    [done] = eng.generate([engine.Request(prompt_ids, params, seed=0)])
    done.tokens, done.stop_id, done.truncated

Placement. Parameters are created or restored already sharded by the training rules table
(sharding.py; ``axis_rules`` "fsdp", "fsdp_tp" or "dp" over any (data, fsdp, tensor) mesh): no
device ever holds a full copy unless the preset replicates ("dp"). Requests are split over the
``data`` axis ("act_request"): in "fsdp"/"fsdp_tp" each weight stays on its devices and only
activations move. The KV cache [L, B, S, K, H] splits its rows over (data, fsdp) ("act_batch"),
so its memory divides over every chip; a batch is padded with idle rows to a multiple of that.
bfloat16 weights and cache by default; ``quantize="int8"`` stores the matrices as int8 with
per-channel scales (quantization.py).

Generation. Requests are grouped into batches of similar prompt length (power-of-two buckets:
few compiles). Prefill runs the padded prompts through the cache in chunks of ``prefill_chunk``
tokens (attention scores stay [B, chunk, S]); decode then runs ``steps_per_call`` steps per device
call in a ``while_loop`` that ends early when every row is done, and hands the new tokens to the
host (``on_tokens``: streaming). Each step chooses every row's token by its own settings
(token_choice.py: modality constraint, stop set, temperature / top-k / top-p, seed). A row ends
at a token of its stop set (``Completion.stop_id``; the stop is not in ``tokens``) or after
``max_new_tokens`` tokens without one (``Completion.truncated``). Tokens depend only on a
request's prompt, settings and seed: not on the batch, the mesh or ``steps_per_call``.

Cache slots past a row's prompt hold padding after prefill; each is overwritten before a query
can see it (a query at slot i sees slots <= i, and slot i is written first).

Axes: B rows, P padded prompt length, C prefill chunk, S cache length, D embed, V vocab,
L layers, K kv heads, H head dim, N steps per call.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from glmvoice_jax import checkpoint, errors, sharding
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.inference import quantization, token_choice
from glmvoice_jax.models import glm

CACHE_AXES = ("layers", "act_batch", "act_len", "act_kv_heads", None)
ROW_AXES = ("act_request", "act_len", "act_embed")
_MIN_PROMPT_BUCKET = 32
_MIN_CACHE_BUCKET = 64


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request is generated.

    Attributes:
      temperature: softmax temperature; 0 = greedy.
      top_p: nucleus mass kept, in (0, 1]; 1 = off.
      top_k: keep the k best ids; 0 = off.
      max_new_tokens: at most this many tokens are generated (a stop included); a request that
        reaches it without a stop is truncated.
      min_new_tokens: stops are masked until this many tokens exist.
      stop_ids: token ids that end the request (not part of the output).
      modality: "free", "text", "speech" or "interleave" (token_choice.py).
      interleave: (text tokens, speech tokens) per block of the "interleave" modality.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    stop_ids: tuple[int, ...] = ()
    modality: str = "free"
    interleave: tuple[int, int] = (13, 26)

    def __post_init__(self):
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite value >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) must lie in [0, max_new_tokens "
                f"({self.max_new_tokens})]"
            )
        if self.modality not in token_choice.MODALITIES:
            raise ValueError(
                f"modality must be one of {token_choice.MODALITIES}, not {self.modality!r}"
            )
        if len(self.interleave) != 2 or min(self.interleave) < 1:
            raise ValueError(f"interleave must be two positive block sizes, got {self.interleave}")
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))

    @property
    def filters(self) -> bool:
        """Whether top-k / top-p change anything for this request."""
        return self.temperature > 0 and (self.top_p < 1 or self.top_k > 0)


# The GLM-4-Voice release demo's sampling (glm4voice.md §8); stops come from the layout.
DEMO_SAMPLING = SamplingParams(temperature=0.2, top_p=0.8, max_new_tokens=2000)


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """A prompt (LM ids), its sampling settings and its seed."""

    prompt: Sequence[int] | np.ndarray
    params: SamplingParams = SamplingParams()
    seed: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Completion:
    """What a request generated.

    Attributes:
      tokens: int32 ids generated, the stop excluded.
      stop_id: the stop id that ended it, or None when it hit ``max_new_tokens`` (truncated).
      prompt_tokens: length of its prompt.
    """

    tokens: np.ndarray
    stop_id: int | None
    prompt_tokens: int

    @property
    def truncated(self) -> bool:
        return self.stop_id is None


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the engine places the model and batches requests.

    Attributes:
      dtype: weights, activations and KV cache: "bfloat16" or "float32".
      quantize: "none" or "int8" (weight-only, per-channel scales).
      axis_rules: preset of the rules table (sharding.py): "fsdp", "fsdp_tp" or "dp".
      mesh: (data, fsdp, tensor) sizes, one may be -1 (sharding.resolve_mesh_shape).
      batch_size: requests per batch (rounded up to a multiple of the cache's row split).
      max_context: prompt + new tokens allowed per request.
      prefill_chunk: prompt tokens per prefill pass (a power of two).
      steps_per_call: decode steps per device call (1 streams token by token).
      speech_codes: the speech ids the engine may choose are the first ``speech_codes`` codes of
        the layout (0: all): a speech tokenizer / decoder with a smaller codebook than the LM's
        layout (the tiny demo: 256 codes of 512).
    """

    dtype: str = "bfloat16"
    quantize: str = "none"
    axis_rules: str = "fsdp"
    mesh: tuple[tuple[str, int], ...] = (("data", 1), ("fsdp", -1), ("tensor", 1))
    batch_size: int = 8
    max_context: int = 8192
    prefill_chunk: int = 512
    steps_per_call: int = 16
    speech_codes: int = 0

    def __post_init__(self):
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be bfloat16 or float32, not {self.dtype!r}")
        if self.quantize not in quantization.MODES:
            raise ValueError(f"quantize must be one of {quantization.MODES}, not {self.quantize!r}")
        sharding.rules(self.axis_rules)  # raises naming the presets
        object.__setattr__(
            self, "mesh", tuple((str(k), int(v)) for k, v in dict(self.mesh).items())
        )
        c = self.prefill_chunk
        if c < 1 or c & (c - 1):
            raise ValueError(f"prefill_chunk must be a power of two, got {c}")
        if min(self.batch_size, self.max_context, self.steps_per_call) < 1:
            raise ValueError(
                f"batch_size ({self.batch_size}), max_context ({self.max_context}) and "
                f"steps_per_call ({self.steps_per_call}) must be >= 1"
            )


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, n - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# The model step: the GLM decode path on a (possibly quantised) parameter tree.


@dataclasses.dataclass(frozen=True)
class _Graph:
    """What the compiled steps need besides arrays: config, graphdefs, token classes."""

    cfg: glm.GLMConfig
    block: Any  # graphdef of one GLMBlock
    final_norm: Any  # graphdef of the final RMSNorm
    classes: token_choice.TokenClasses

    def __hash__(self):
        return id(self)


def _forward(g: _Graph, params, tokens, cache, index):
    """Tokens [B, T] at slots index[b].. -> final-normed hidden [B, T, D] and the new cache."""
    cfg = g.cfg
    dt = jnp.dtype(cfg.dtype)
    t = tokens.shape[1]
    positions = index[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # (B, T)
    x = quantization.take_rows(params["embed"]["embedding"], tokens, dt)  # (B, T, D)
    x = sharding.constrain(x, ROW_AXES)
    cos, sin = glm.rotary_tables(positions, cfg)

    def body(x, layer):
        weights, k_cache, v_cache = layer
        block = nnx.merge(g.block, quantization.dequantize(weights, dt))
        x, k_cache, v_cache = block.decode(x, cos, sin, k_cache, v_cache, index)
        return sharding.constrain(x, ROW_AXES), (k_cache, v_cache)

    x, (k, v) = jax.lax.scan(body, x, (params["layers"], cache["k"], cache["v"]))
    return nnx.merge(g.final_norm, params["final_norm"])(x), {"k": k, "v": v}


def _logits(g: _Graph, params, hidden):
    """Hidden [B, D] -> float32 logits [B, V]."""
    head = quantization.dequantize(params["head"]["kernel"], hidden.dtype)
    return jnp.einsum("BD,DV->BV", hidden, head, preferred_element_type=jnp.float32)


def _prefill(g: _Graph, chunk: int, cache_len: int, params, tokens, prompt_lens):
    """Writes padded prompts [B, P] into a new cache; returns (cache, last logits [B, V])."""
    cfg = g.cfg
    b, p = tokens.shape
    shape = (cfg.num_layers, b, cache_len, cfg.num_kv_heads, cfg.head_dim)
    cache = {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}
    cache = jax.tree.map(lambda c: sharding.constrain(c, CACHE_AXES), cache)
    pieces = tokens.reshape(b, p // chunk, chunk).swapaxes(0, 1)  # (P / C, B, C)

    def body(carry, xs):
        cache, last = carry
        piece, start = xs
        hidden, cache = _forward(g, params, piece, cache, jnp.full((b,), start, jnp.int32))
        pos = prompt_lens - 1 - start  # (B,) the prompt's last token inside this piece?
        inside = (pos >= 0) & (pos < chunk)
        picked = hidden[jnp.arange(b), jnp.clip(pos, 0, chunk - 1)]  # (B, D)
        return (cache, jnp.where(inside[:, None], picked, last)), None

    last = jnp.zeros((b, cfg.embed_dim), cfg.dtype)
    starts = jnp.arange(p // chunk, dtype=jnp.int32) * chunk
    (cache, last), _ = jax.lax.scan(body, (cache, last), (pieces, starts))
    return cache, _logits(g, params, last)


def _decode(g: _Graph, steps: int, use_filters: bool, params, carry, rows, max_new):
    """Up to ``steps`` decode steps; returns (carry, tokens [B, steps] with -1 when idle)."""
    b = carry["index"].shape[0]

    def cond(c):
        return (c[0] < steps) & ~jnp.all(c[1]["done"])

    def body(c):
        i, s, out = c
        state = token_choice.RowState(s["generated"], s["text_done"])
        ok = token_choice.allowed(g.classes, rows, state)
        token = token_choice.choose(s["logits"], ok, rows, state, use_filters=use_filters)
        stop = token_choice.is_stop(rows, token)
        active = ~s["done"]
        out = out.at[:, i].set(jnp.where(active, token, -1))
        content = active & ~stop
        nxt = token_choice.advance(g.classes, rows, state, token)
        generated = jnp.where(content, nxt.generated, s["generated"])
        done = s["done"] | (active & stop) | (content & (generated >= max_new))
        hidden, cache = _forward(g, params, token[:, None], s["cache"], s["index"])
        s = {
            "cache": cache,
            "logits": _logits(g, params, hidden[:, 0]),
            "index": s["index"] + content.astype(jnp.int32),
            "generated": generated,
            "text_done": jnp.where(content, nxt.text_done, s["text_done"]),
            "done": done,
            "stop": jnp.where(active & stop, token, s["stop"]),
        }
        return i + 1, s, out

    out = jnp.full((b, steps), -1, jnp.int32)
    _, carry, out = jax.lax.while_loop(cond, body, (jnp.int32(0), carry, out))
    return carry, out


# ---------------------------------------------------------------------------------------------
# The engine.


class Engine:
    """A GLM decoder placed on a mesh, generating batches of requests.

    Args:
      model_cfg: the decoder's config (its dtype fields are replaced by ``config.dtype``).
      layout: the checkpoint's token layout (token classes, stop ids).
      params: ``nnx.to_pure_dict`` parameters already placed with ``shardings`` (and quantised
        when ``config.quantize`` says so): use ``from_checkpoint`` or ``from_model``.
      shardings: their NamedShardings.
      mesh: the (data, fsdp, tensor) mesh they live on.
      config: engine settings.
    """

    def __init__(
        self,
        model_cfg: glm.GLMConfig,
        layout: token_layout_lib.TokenLayout,
        params: Any,
        shardings: Any,
        mesh: Mesh,
        config: EngineConfig,
    ):
        self.model_cfg = model_cfg
        self._full_layout = layout
        self._variants: dict[int, Engine] = {}
        if config.speech_codes:
            if not 0 < config.speech_codes <= layout.num_audio_tokens:
                raise ValueError(
                    f"speech_codes ({config.speech_codes}) must lie in [1, "
                    f"{layout.num_audio_tokens}], the speech ids of token layout {layout.name!r}"
                )
            layout = dataclasses.replace(layout, num_audio_tokens=config.speech_codes)
        self.layout = layout
        self.params = params
        self.shardings = shardings
        self.mesh = mesh
        self.config = config
        abstract = nnx.eval_shape(lambda: glm.GLMDecoder(model_cfg, rngs=nnx.Rngs(0)))
        block, _ = nnx.split(abstract.layers)
        norm, _ = nnx.split(abstract.final_norm)
        self._graph = _Graph(
            model_cfg, block, norm, token_choice.TokenClasses.of(layout, model_cfg.vocab_size)
        )
        self.rows_multiple = sharding.data_parallel_size(mesh, config.axis_rules)
        self._jitted: dict[tuple, Callable] = {}
        self.stats = {"prompt_tokens": 0, "new_tokens": 0, "prefill_secs": 0.0, "decode_secs": 0.0}

    # -- construction --------------------------------------------------------------------------

    @staticmethod
    def _model_config(cfg: glm.GLMConfig, config: EngineConfig) -> glm.GLMConfig:
        return dataclasses.replace(
            cfg, param_dtype=config.dtype, dtype=config.dtype, remat_policy="none"
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        config: EngineConfig | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
    ) -> Engine:
        """Restores a GLM checkpoint (any CKPT argument) straight onto its shards.

        Raises:
          errors.UserError: the checkpoint holds another model or has no token layout.
        """
        config = config or EngineConfig()
        meta = checkpoint.read_meta(path)
        model_cfg = checkpoint.model_config_from_meta(meta)
        if not isinstance(model_cfg, glm.GLMConfig):
            raise errors.UserError(
                f"checkpoint {path} holds a {type(model_cfg).__name__}, not a GLM decoder"
            )
        if "token_layout" not in meta:
            raise errors.UserError(
                f"checkpoint {path} records no token layout in its meta, so its text, special and "
                "speech ids are unknown; re-import it with glmvoice-import (which records one)"
            )
        layout = token_layout_lib.TokenLayout.from_json(meta["token_layout"])
        model_cfg = cls._model_config(model_cfg, config)
        mesh = sharding.make_mesh(dict(config.mesh), devices)
        _, abstract, shardings = sharding.param_shardings(
            lambda: glm.GLMDecoder(model_cfg, rngs=nnx.Rngs(0)), mesh, config.axis_rules
        )
        params = checkpoint.restore_params(path, checkpoint.abstract_like(abstract, shardings))
        params, shardings = quantization.quantize(params, shardings, config.quantize)
        return cls(model_cfg, layout, params, shardings, mesh, config)

    @classmethod
    def from_model(
        cls,
        model: glm.GLMDecoder,
        layout: token_layout_lib.TokenLayout,
        config: EngineConfig | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
    ) -> Engine:
        """Places an in-memory model's parameters on the mesh (tests, the text-to-token job)."""
        config = config or EngineConfig()
        model_cfg = cls._model_config(model.cfg, config)
        mesh = sharding.make_mesh(dict(config.mesh), devices)
        _, _, shardings = sharding.param_shardings(
            lambda: glm.GLMDecoder(model_cfg, rngs=nnx.Rngs(0)), mesh, config.axis_rules
        )
        dt = jnp.dtype(config.dtype)
        pure = jax.tree.map(lambda x: jnp.asarray(x, dt), nnx.to_pure_dict(nnx.state(model)))
        params = jax.device_put(pure, shardings)
        params, shardings = quantization.quantize(params, shardings, config.quantize)
        return cls(model_cfg, layout, params, shardings, mesh, config)

    def with_speech_codes(self, codes: int) -> Engine:
        """This engine's parameters (not copied) choosing among the first ``codes`` speech ids."""
        if codes == self.config.speech_codes:
            return self
        if codes not in self._variants:  # kept: each variant compiles its own steps once
            config = dataclasses.replace(self.config, speech_codes=codes)
            full = self._full_layout
            self._variants[codes] = Engine(
                self.model_cfg, full, self.params, self.shardings, self.mesh, config
            )
        variant = self._variants[codes]
        variant.params = self.params  # the current arrays (the trainer swaps them in)
        return variant

    # -- compiled steps ------------------------------------------------------------------------

    def _named(self, axes) -> NamedSharding:
        return NamedSharding(
            self.mesh, sharding.logical_to_spec(axes, sharding.rules(self.config.axis_rules))
        )

    def _carry_shardings(self) -> dict:
        rows = self._named(("act_request",))
        cache = self._named(CACHE_AXES)
        return {
            "cache": {"k": cache, "v": cache},
            "logits": self._named(("act_request", None)),
            "index": rows,
            "generated": rows,
            "text_done": rows,
            "done": rows,
            "stop": rows,
        }

    def _prefill_fn(self, cache_len: int, chunk: int) -> Callable:
        key = ("prefill", cache_len, chunk)
        if key not in self._jitted:
            carry = self._carry_shardings()
            self._jitted[key] = jax.jit(
                functools.partial(_prefill, self._graph, chunk, cache_len),
                in_shardings=(self.shardings, self._named(("act_request", None)), carry["index"]),
                out_shardings=(carry["cache"], carry["logits"]),
            )
        return self._jitted[key]

    def _decode_fn(self, steps: int, use_filters: bool) -> Callable:
        key = ("decode", steps, use_filters)
        if key not in self._jitted:
            carry = self._carry_shardings()
            rows = self._named(("act_request",))
            row_settings = token_choice.RowSettings(
                **{f.name: rows for f in dataclasses.fields(token_choice.RowSettings)}
            )
            row_settings = dataclasses.replace(
                row_settings, stop_ids=self._named(("act_request", None))
            )
            self._jitted[key] = jax.jit(
                functools.partial(_decode, self._graph, steps, use_filters),
                in_shardings=(self.shardings, carry, row_settings, rows),
                out_shardings=(carry, self._named(("act_request", None))),
                donate_argnums=(1,),
            )
        return self._jitted[key]

    # -- requests ------------------------------------------------------------------------------

    def _check(self, i: int, req: Request) -> np.ndarray:
        ids = np.asarray(req.prompt, np.int64).reshape(-1)
        v = self.model_cfg.vocab_size
        if ids.size == 0:
            raise ValueError(f"request {i}: the prompt is empty")
        if ids.min() < 0 or ids.max() >= v:
            bad = int(ids[(ids < 0) | (ids >= v)][0])
            raise ValueError(f"request {i}: prompt id {bad} is outside the vocabulary [0, {v})")
        total = ids.size + req.params.max_new_tokens
        if total > self.config.max_context:
            raise ValueError(
                f"request {i}: prompt ({ids.size} tokens) + max_new_tokens "
                f"({req.params.max_new_tokens}) = {total} exceeds the engine's max_context "
                f"({self.config.max_context}); shorten the prompt or lower max_new_tokens"
            )
        if req.params.modality in ("speech", "interleave") and not self.layout.num_audio_tokens:
            raise ValueError(
                f"request {i}: modality {req.params.modality!r} needs speech ids, but token "
                f"layout {self.layout.name!r} has none"
            )
        bad_stops = [s for s in req.params.stop_ids if not 0 <= s < v]
        if bad_stops:
            raise ValueError(f"request {i}: stop ids {bad_stops} are outside [0, {v})")
        return ids.astype(np.int32)

    def _row_settings(self, reqs: Sequence[Request], height: int) -> token_choice.RowSettings:
        """Per-row arrays; idle padding rows get greedy free settings."""
        n_stop = _bucket(max([len(r.params.stop_ids) for r in reqs] + [1]), 4)
        cols: dict[str, list] = {f.name: [] for f in dataclasses.fields(token_choice.RowSettings)}
        for r in list(reqs) + [None] * (height - len(reqs)):
            p = r.params if r is not None else SamplingParams(temperature=0.0)
            cols["modality"].append(token_choice.MODALITIES.index(p.modality))
            cols["text_block"].append(p.interleave[0])
            cols["speech_block"].append(p.interleave[1])
            cols["stop_ids"].append(list(p.stop_ids) + [-1] * (n_stop - len(p.stop_ids)))
            cols["min_new"].append(p.min_new_tokens)
            cols["temperature"].append(p.temperature)
            cols["top_k"].append(p.top_k)
            cols["top_p"].append(p.top_p)
            cols["seed"].append((r.seed if r is not None else 0) & 0xFFFFFFFF)
        dtypes = {"temperature": np.float32, "top_p": np.float32, "seed": np.uint32}
        return token_choice.RowSettings(
            **{k: np.asarray(v, dtypes.get(k, np.int32)) for k, v in cols.items()}
        )

    def generate(
        self,
        requests: Sequence[Request],
        *,
        on_tokens: Callable[[int, np.ndarray], None] | None = None,
    ) -> list[Completion]:
        """Generates every request; results in input order.

        Args:
          requests: prompts with their settings and seeds.
          on_tokens: called as on_tokens(request index, new ids) after each device call with
            the ids a request generated since the last call (stops excluded): streaming.

        Raises:
          ValueError: naming the request, for an empty or out-of-vocabulary prompt, a stop id
            outside the vocabulary, or prompt + max_new_tokens past ``max_context``.
        """
        prompts = [self._check(i, r) for i, r in enumerate(requests)]
        order = sorted(range(len(requests)), key=lambda i: (len(prompts[i]), i))
        rows = -(-self.config.batch_size // self.rows_multiple) * self.rows_multiple
        out: list[Completion | None] = [None] * len(requests)
        for start in range(0, len(order), rows):
            idx = order[start : start + rows]
            done = self._generate_batch(
                [requests[i] for i in idx], [prompts[i] for i in idx], idx, on_tokens
            )
            for i, completion in zip(idx, done, strict=True):
                out[i] = completion
        return out  # type: ignore[return-value]

    def _generate_batch(self, reqs, prompts, idx, on_tokens) -> list[Completion]:
        height = -(-len(reqs) // self.rows_multiple) * self.rows_multiple
        longest = max(len(p) for p in prompts)
        p_len = _bucket(longest, _MIN_PROMPT_BUCKET)
        chunk = min(p_len, self.config.prefill_chunk)
        max_new = max(r.params.max_new_tokens for r in reqs)
        cache_len = _bucket(p_len + max_new, _MIN_CACHE_BUCKET)
        tokens = np.zeros((height, p_len), np.int32)
        lens = np.ones((height,), np.int32)
        limits = np.zeros((height,), np.int32)
        for r, (req, ids) in enumerate(zip(reqs, prompts, strict=True)):
            tokens[r, : ids.size], lens[r], limits[r] = ids, ids.size, req.params.max_new_tokens
        settings = self._row_settings(reqs, height)
        use_filters = any(r.params.filters for r in reqs)
        carry_sh = self._carry_shardings()
        start = time.perf_counter()
        with sharding.activate(self.mesh, self.config.axis_rules):
            cache, logits = self._prefill_fn(cache_len, chunk)(self.params, tokens, lens)
            rows_sh = carry_sh["index"]
            carry = {
                "cache": cache,
                "logits": logits,
                "index": jax.device_put(lens, rows_sh),
                "generated": jax.device_put(np.zeros((height,), np.int32), rows_sh),
                "text_done": jax.device_put(np.zeros((height,), bool), rows_sh),
                "done": jax.device_put(limits == 0, rows_sh),  # idle rows are done at once
                "stop": jax.device_put(np.full((height,), -1, np.int32), rows_sh),
            }
            jax.block_until_ready(logits)
            self.stats["prefill_secs"] += time.perf_counter() - start
            self.stats["prompt_tokens"] += int(sum(p.size for p in prompts))
            start = time.perf_counter()
            generated: list[list[np.ndarray]] = [[] for _ in reqs]
            decode = self._decode_fn(self.config.steps_per_call, use_filters)
            while True:
                carry, new = decode(self.params, carry, settings, limits)
                new, done, stops = jax.device_get((new, carry["done"], carry["stop"]))
                for r in range(len(reqs)):
                    row = new[r][new[r] >= 0]
                    if row.size and stops[r] >= 0 and done[r] and row[-1] == stops[r]:
                        row = row[:-1]  # the stop ends the request; it is not output
                    if row.size:
                        generated[r].append(row)
                        if on_tokens is not None:
                            on_tokens(idx[r], row)
                if done.all():
                    break
        self.stats["decode_secs"] += time.perf_counter() - start
        out = []
        for r, ids in enumerate(prompts):
            toks = np.concatenate(generated[r]) if generated[r] else np.zeros((0,), np.int32)
            self.stats["new_tokens"] += int(toks.size)
            out.append(
                Completion(
                    toks.astype(np.int32), None if stops[r] < 0 else int(stops[r]), int(ids.size)
                )
            )
        return out

    def prompt_logits(self, prompts: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
        """float32 next-token logits [n, V] after each prompt (prefill only): tests and evals."""
        reqs = [Request(p, SamplingParams(max_new_tokens=1)) for p in prompts]
        ids = [self._check(i, r) for i, r in enumerate(reqs)]
        height = -(-len(ids) // self.rows_multiple) * self.rows_multiple
        p_len = _bucket(max(x.size for x in ids), _MIN_PROMPT_BUCKET)
        tokens = np.zeros((height, p_len), np.int32)
        lens = np.ones((height,), np.int32)
        for r, x in enumerate(ids):
            tokens[r, : x.size], lens[r] = x, x.size
        chunk = min(p_len, self.config.prefill_chunk)
        with sharding.activate(self.mesh, self.config.axis_rules):
            _, logits = self._prefill_fn(_bucket(p_len, _MIN_CACHE_BUCKET), chunk)(
                self.params, tokens, lens
            )
        return np.asarray(jax.device_get(logits))[: len(ids)]
