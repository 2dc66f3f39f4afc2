"""Batched speech-token sampling with the GLM KV cache: the text-to-token model's generator.

The text-to-token model (glm4voice.md §7.2, project default §12 #12) is a GLM decoder trained on
``prompts.tts`` records. To turn a text span into speech tokens we feed ``prompts.tts_prompt``
([gMASK]<sop> {text} <|begin_of_audio|>) and sample until <|end_of_audio|>:

* Only speech ids and <|end_of_audio|> can be sampled: the output head is restricted to those
  num_audio_tokens + 1 columns (also 10x less head compute for the 168,960-row GLM-4-Voice head).
  <|end_of_audio|> is masked until ``min_tokens`` speech tokens exist, and forced once a row has
  ``max_tokens(n_text) = min(max_new_tokens, ceil(max_len_ratio * n_text) + max_len_extra)``.
* temperature (0 = greedy) then nucleus (top-p) filtering; defaults 1.0 / 0.9 (§12 #12).
* Each prompt carries its own seed: the row's key is ``key(seed)`` folded with the step, so a
  span's speech does not depend on which other spans share its batch, on the device count, or on
  the process that samples it (a resumed job rewrites identical shards).
* Rows are batched by similar prompt length, padded to power-of-two buckets (few compiles), and
  sharded over the local devices on a 1-D "data" mesh with replicated parameters; processes split
  the work upstream (glmvoice_jax/corpora/interleave_records.py gives each its own output shards).
* Prefill writes the whole padded prompt into the cache; slots past a row's prompt hold padding
  but are always overwritten before a query can see them (decode masks slots > the query slot).

Axes: B batch, P prompt length, M new tokens, D embed, A speech ids + 1 (end of audio).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from glmvoice_jax import checkpoint
from glmvoice_jax.data import prompts
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.models import glm


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings.

    Attributes:
      temperature: softmax temperature; 0 means greedy (argmax).
      top_p: nucleus mass kept (1.0 = no filtering).
      max_len_ratio: speech tokens allowed per text token of the prompt.
      max_len_extra: speech tokens allowed on top of the ratio.
      max_new_tokens: hard cap of speech tokens per span.
      min_tokens: <|end_of_audio|> is masked until this many speech tokens were sampled.
      batch_size: rows per device batch (rounded up to a multiple of the device count).
    """

    temperature: float = 1.0
    top_p: float = 0.9
    max_len_ratio: float = 8.0
    max_len_extra: int = 16
    max_new_tokens: int = 1024
    min_tokens: int = 1
    batch_size: int = 64

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.max_len_ratio <= 0 or self.max_len_extra < 0 or self.max_new_tokens < 1:
            raise ValueError(
                f"need max_len_ratio > 0 ({self.max_len_ratio}), max_len_extra >= 0 "
                f"({self.max_len_extra}) and max_new_tokens >= 1 ({self.max_new_tokens})"
            )
        if not 0 <= self.min_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) must lie in [0, max_new_tokens "
                f"({self.max_new_tokens})]"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def max_tokens(self, n_text: int) -> int:
        """Speech tokens a span of n_text text tokens may get."""
        return min(self.max_new_tokens, math.ceil(self.max_len_ratio * n_text) + self.max_len_extra)


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, n - 1).bit_length())


def _hidden(model: glm.GLMDecoder, tokens, cache, index):
    """GLMDecoder.decode without the full-vocab head: final-normed [B, T, D] and the new cache."""
    cfg = model.cfg
    t = tokens.shape[1]
    positions = index[:, None] + jnp.arange(t, dtype=jnp.int32)[None]  # (B, T)
    x = jnp.take(model.embed.embedding[...], tokens, axis=0).astype(jnp.dtype(cfg.dtype))
    cos, sin = glm.rotary_tables(positions, cfg)

    def body(x, block, k_cache, v_cache):
        return block.decode(x, cos, sin, k_cache, v_cache, index)

    run = nnx.scan(body, in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0, 0))
    x, k, v = run(x, model.layers, cache["k"], cache["v"])
    return model.final_norm(x), {"k": k, "v": v}


def _filter_top_p(logits: jax.Array, top_p: float) -> jax.Array:
    """Masks logits [B, A] outside the smallest set whose probability reaches top_p."""
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # (B, A) descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly better ids
    kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)  # the worst kept logit; best always kept
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def _generate(
    graphdef,
    state,
    tokens,
    prompt_lens,
    limits,
    seeds,
    *,
    max_new: int,
    temperature: float,
    top_p: float,
    min_tokens: int,
    audio_offset: int,
    num_audio: int,
    eoa_id: int,
):
    """Samples [B, max_new + 1] choices in [0, A]: A ids from audio_offset, and A for eoa_id.

    Speech: the codebook ids and <|end_of_audio|>; ASR text: the text ids and <|endoftext|>.
    """
    model = nnx.merge(graphdef, state)
    b, p = tokens.shape
    cache = model.init_cache(b, p + max_new + 1)
    hidden, cache = _hidden(model, tokens, cache, jnp.zeros((b,), jnp.int32))
    last = hidden[jnp.arange(b), prompt_lens - 1]  # (B, D)
    kernel = model.head.kernel[...]
    head = jnp.concatenate(
        [
            jax.lax.dynamic_slice_in_dim(kernel, audio_offset, num_audio, axis=1),
            jax.lax.dynamic_slice_in_dim(kernel, eoa_id, 1, axis=1),
        ],
        axis=1,
    ).astype(hidden.dtype)  # (D, A)
    keys = jax.vmap(jax.random.key)(seeds)

    def logits_of(h):
        return jnp.einsum("BD,DA->BA", h, head, preferred_element_type=jnp.float32)

    def choose(logits, step):
        stop_col = jnp.arange(num_audio + 1) == num_audio
        logits = jnp.where(stop_col[None] & (step < min_tokens), -jnp.inf, logits)
        if temperature == 0:
            choice = jnp.argmax(logits, axis=-1)
        else:
            logits = logits / temperature
            if top_p < 1:
                logits = _filter_top_p(logits, top_p)
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
            choice = jax.vmap(jax.random.categorical)(step_keys, logits)
        return jnp.where(step >= limits, num_audio, choice).astype(jnp.int32)

    def cond(carry):
        step, _, _, _, _, done = carry
        return (step <= max_new) & ~jnp.all(done)

    def body(carry):
        step, logits, cache, index, out, done = carry
        choice = choose(logits, step)
        out = out.at[:, step].set(jnp.where(done, num_audio, choice))
        done = done | (choice == num_audio)
        ids = jnp.where(choice == num_audio, eoa_id, audio_offset + choice)
        # NNX modules may not cross trace levels: merge a fresh view inside the loop body.
        fresh = jax.tree.map(lambda x: x, state)  # new Variables at this trace level
        h, cache = _hidden(nnx.merge(graphdef, fresh), ids[:, None], cache, index)
        return step + 1, logits_of(h[:, 0]), cache, index + 1, out, done

    out = jnp.full((b, max_new + 1), num_audio, jnp.int32)
    carry = (jnp.int32(0), logits_of(last), cache, prompt_lens, out, jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, carry)[4]


class SpeechSampler:
    """Text spans -> speech codes with a text-to-token GLM, batched and sharded over devices.

    Args:
      model: the text-to-token GLMDecoder.
      layout: its token layout (speech ids, <|begin_of_audio|>, <|end_of_audio|>).
      cfg: decoding settings.
      devices: devices to shard rows over (default: this process' local devices).
    """

    def __init__(
        self,
        model: glm.GLMDecoder,
        layout: token_layout_lib.TokenLayout,
        cfg: SamplingConfig | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
    ):
        if layout.num_audio_tokens == 0:
            raise ValueError(f"token layout {layout.name!r} has no speech tokens to sample")
        if model.cfg.vocab_size < layout.vocab_size:
            raise ValueError(
                f"model vocab_size {model.cfg.vocab_size} is smaller than token layout "
                f"{layout.name!r} ({layout.vocab_size} ids)"
            )
        self.layout = layout
        self.cfg = cfg or SamplingConfig()
        devices = list(devices if devices is not None else jax.local_devices())
        self.mesh = jax.make_mesh(
            (len(devices),),
            ("data",),
            axis_types=(jax.sharding.AxisType.Auto,),
            devices=devices,
        )
        self.rows_multiple = len(devices)
        graphdef, state = nnx.split(model)
        self._graphdef = graphdef
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._rows = NamedSharding(self.mesh, PartitionSpec("data"))
        self._state = jax.device_put(state, self._replicated)
        self.stats = {"spans": 0, "speech_tokens": 0, "seconds": 0.0}

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        cfg: SamplingConfig | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
        compute_dtype: str | None = None,
    ) -> SpeechSampler:
        """Loads a text-to-token checkpoint (any CKPT argument: workdir, manager root, step)."""
        meta = checkpoint.read_meta(path)
        model_cfg = checkpoint.model_config_from_meta(meta)
        if not isinstance(model_cfg, glm.GLMConfig):
            raise ValueError(f"checkpoint {path} holds a {type(model_cfg).__name__}, not a GLM")
        model_cfg = dataclasses.replace(
            model_cfg, remat_policy="none", dtype=compute_dtype or model_cfg.dtype
        )
        layout = token_layout_lib.TokenLayout.from_json(meta["token_layout"])
        abstract = nnx.eval_shape(lambda: glm.GLMDecoder(model_cfg, rngs=nnx.Rngs(0)))
        graphdef, abs_state = nnx.split(abstract)
        pure = nnx.to_pure_dict(abs_state)
        devices = list(devices if devices is not None else jax.local_devices())
        mesh = jax.make_mesh(
            (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
        )
        replicated = NamedSharding(mesh, PartitionSpec())
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), pure
        )
        params = checkpoint.restore_params(path, target)
        nnx.replace_by_pure_dict(abs_state, params)
        return cls(nnx.merge(graphdef, abs_state), layout, cfg, devices=devices)

    def with_config(self, cfg: SamplingConfig) -> SpeechSampler:
        """The same model on the same devices with other decoding settings."""
        model = nnx.merge(self._graphdef, self._state)
        return SpeechSampler(model, self.layout, cfg, devices=list(self.mesh.devices.flat))

    @functools.lru_cache(maxsize=32)  # noqa: B019 - one compiled function per shape bucket
    def _jitted(self, max_new: int, offset: int, count: int, stop_id: int):
        c = self.cfg

        def fn(state, tokens, prompt_lens, limits, seeds):
            return _generate(
                self._graphdef,
                state,
                tokens,
                prompt_lens,
                limits,
                seeds,
                max_new=max_new,
                temperature=c.temperature,
                top_p=c.top_p,
                min_tokens=c.min_tokens,
                audio_offset=offset,
                num_audio=count,
                eoa_id=stop_id,
            )

        rows = self._rows
        return jax.jit(
            fn,
            in_shardings=(self._replicated, rows, rows, rows, rows),
            out_shardings=rows,
        )

    def sample(self, texts: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        """Speech codebook indices for each text span.

        Args:
          texts: text ids of each span (no [gMASK]<sop> prefix).
          seeds: one uint32 seed per span; same seed and text, same speech.

        Returns:
          int32 code arrays (0..num_audio_tokens-1), one per span, in input order.
        """
        if len(texts) != len(seeds):
            raise ValueError(f"{len(texts)} texts but {len(seeds)} seeds")
        start = time.perf_counter()
        prompts_ = [prompts.tts_prompt(t, self.layout) for t in texts]
        limits = [self.cfg.max_tokens(len(np.asarray(t).reshape(-1))) for t in texts]
        lay = self.layout
        stop = lay.special(token_layout_lib.END_AUDIO)
        out = self._run(prompts_, limits, seeds, lay.audio_offset, lay.num_audio_tokens, stop)
        self.stats["spans"] += len(texts)
        self.stats["speech_tokens"] += sum(len(o) for o in out)
        self.stats["seconds"] += time.perf_counter() - start
        return out

    def transcribe(
        self, codes: Sequence[np.ndarray], seeds: Sequence[int], *, max_tokens: int
    ) -> list[np.ndarray]:
        """ASR through the LM: text ids after the ``asr`` template's prefix, until <|endoftext|>.

        The prompt is [gMASK]<sop> <|begin_of_audio|> {speech} <|end_of_audio|> (prompts.asr);
        choices are restricted to the text ids and <|endoftext|>, as ``sample`` restricts TTS to
        the speech ids and <|end_of_audio|>. Returns text ids (no end token) per utterance.
        """
        if len(codes) != len(seeds):
            raise ValueError(f"{len(codes)} utterances but {len(seeds)} seeds")
        lay = self.layout
        prompts_ = [
            np.concatenate([lay.bos_ids, lay.wrap_audio(np.asarray(c).reshape(-1))]).astype(
                np.int32
            )
            for c in codes
        ]
        limits = [max_tokens] * len(codes)
        return self._run(prompts_, limits, seeds, 0, lay.text_vocab_size, lay.eos_id)

    def _run(self, prompts_, limits, seeds, offset: int, count: int, stop_id: int):
        """Batched generation over ids [offset, offset + count) + ``stop_id``; returns indices."""
        order = sorted(range(len(prompts_)), key=lambda i: (len(prompts_[i]), limits[i]))
        rows = -(-self.cfg.batch_size // self.rows_multiple) * self.rows_multiple
        out: list[np.ndarray | None] = [None] * len(prompts_)
        for s in range(0, len(order), rows):
            idx = order[s : s + rows]
            # Power-of-two buckets from 32: few distinct shapes, so few compiles.
            p = _bucket(max(len(prompts_[i]) for i in idx), 32)
            m = _bucket(max(limits[i] for i in idx), 32)
            height = -(-len(idx) // self.rows_multiple) * self.rows_multiple
            tokens = np.zeros((height, p), np.int32)
            lens = np.ones((height,), np.int32)
            lim = np.zeros((height,), np.int32)  # padding rows stop at once
            seed_arr = np.zeros((height,), np.uint32)
            for r, i in enumerate(idx):
                tokens[r, : len(prompts_[i])] = prompts_[i]
                lens[r], lim[r], seed_arr[r] = len(prompts_[i]), limits[i], seeds[i] & 0xFFFFFFFF
            with jax.set_mesh(self.mesh):
                choices = self._jitted(m, offset, count, stop_id)(
                    self._state, tokens, lens, lim, seed_arr
                )
            choices = np.asarray(jax.device_get(choices))
            for r, i in enumerate(idx):
                row = choices[r]
                end = int(np.argmax(row == count)) if (row == count).any() else len(row)
                out[i] = row[:end].astype(np.int32)
        return out


class LookupSampler:
    """A model-free stand-in for the text-to-token model: each text id -> ``codes_per_id`` codes.

    The codes come from a seeded table, with a fraction ``noise`` replaced by per-span seeded
    random codes. It has ``SpeechSampler``'s interface (``layout``, ``cfg``, ``sample``,
    ``stats``), so the interleaving job, its tests and a fast demo can run without training a
    model; the speech it produces is learnable by construction but is not speech.
    """

    def __init__(
        self,
        layout: token_layout_lib.TokenLayout,
        *,
        codes_per_id: int = 2,
        noise: float = 0.05,
        seed: int = 0,
    ):
        if layout.num_audio_tokens == 0:
            raise ValueError(f"token layout {layout.name!r} has no speech tokens to sample")
        self.layout = layout
        self.cfg = SamplingConfig(max_len_ratio=codes_per_id, max_len_extra=0)
        self.noise = noise
        self.table = np.random.default_rng([seed, 4242]).integers(
            layout.num_audio_tokens, size=(layout.text_vocab_size, codes_per_id)
        )
        self.stats = {"spans": 0, "speech_tokens": 0, "seconds": 0.0}

    def sample(self, texts: Sequence[np.ndarray], seeds: Sequence[int]) -> list[np.ndarray]:
        start = time.perf_counter()
        out = []
        for text, seed in zip(texts, seeds, strict=True):
            codes = self.table[np.asarray(text, np.int64)].reshape(-1).astype(np.int32)
            rng = np.random.default_rng(int(seed))
            flip = rng.random(codes.size) < self.noise
            codes[flip] = rng.integers(self.layout.num_audio_tokens, size=int(flip.sum()))
            out.append(codes)
        self.stats["spans"] += len(out)
        self.stats["speech_tokens"] += sum(len(c) for c in out)
        self.stats["seconds"] += time.perf_counter() - start
        return out
