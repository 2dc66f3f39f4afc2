"""Text spans -> speech tokens with the text-to-token GLM: a thin user of the generation engine.

The text-to-token model (glm4voice.md §7.2, project default §12 #12) is a GLM decoder trained on
``prompts.tts`` records. To turn a text span into speech tokens we feed ``prompts.tts_prompt``
([gMASK]<sop> {text} <|begin_of_audio|>) and let the engine (engine.py) generate in the
``speech`` modality until <|end_of_audio|>:

* only speech ids and <|end_of_audio|> can be chosen; <|end_of_audio|> is masked until
  ``min_tokens`` speech tokens exist, and a span stops after
  ``max_tokens(n_text) = min(max_new_tokens, ceil(max_len_ratio * n_text) + max_len_extra)``;
* temperature (0 = greedy) then nucleus (top-p) filtering; defaults 1.0 / 0.9 (§12 #12);
* each prompt carries its own seed, so a span's speech does not depend on which other spans share
  its batch, on the device count, or on the process that samples it (a resumed job rewrites
  identical shards);
* rows are batched by prompt length and split over this process's devices (a 1-D data mesh, the
  "dp" rules: parameters replicated, as the text-to-token model is small); processes split the
  work upstream (glmvoice_jax/corpora/interleave_records.py gives each its own output shards).

``transcribe`` is ASR through the LM (the ``asr`` template), in the ``text`` modality.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from glmvoice_jax import checkpoint
from glmvoice_jax.data import prompts
from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.inference import engine as engine_lib
from glmvoice_jax.models import glm

_NO_CONTEXT_LIMIT = 1 << 30  # spans are bounded by SamplingConfig.max_tokens, not by the engine


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

    def params(self, limit: int, modality: str, stop: int) -> engine_lib.SamplingParams:
        """The engine settings of one row that may generate ``limit`` tokens before ``stop``."""
        return engine_lib.SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=limit,
            min_new_tokens=min(self.min_tokens, limit),
            stop_ids=(stop,),
            modality=modality,
        )


def _engine_config(cfg: SamplingConfig, dtype: str, devices: Sequence[jax.Device]):
    return engine_lib.EngineConfig(
        dtype=dtype,
        axis_rules="dp",
        mesh=(("data", len(devices)), ("fsdp", 1), ("tensor", 1)),
        batch_size=cfg.batch_size,
        max_context=_NO_CONTEXT_LIMIT,
        steps_per_call=32,
    )


class SpeechSampler:
    """Text spans -> speech codes with a text-to-token GLM, batched and sharded over devices.

    Args:
      model: the text-to-token GLMDecoder (its compute dtype is the engine's).
      layout: its token layout (speech ids, <|begin_of_audio|>, <|end_of_audio|>).
      cfg: decoding settings.
      devices: devices to split rows over (default: this process' local devices).
    """

    def __init__(
        self,
        model: glm.GLMDecoder,
        layout: token_layout_lib.TokenLayout,
        cfg: SamplingConfig | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
    ):
        _check(layout, model.cfg)
        cfg = cfg or SamplingConfig()
        devices = list(devices if devices is not None else jax.local_devices())
        eng = engine_lib.Engine.from_model(
            model, layout, _engine_config(cfg, model.cfg.dtype, devices), devices=devices
        )
        self._attach(eng, cfg)

    def _attach(self, eng: engine_lib.Engine, cfg: SamplingConfig) -> None:
        self.engine = eng
        self.layout = eng.layout
        self.cfg = cfg
        self.rows_multiple = eng.rows_multiple
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
        cfg = cfg or SamplingConfig()
        devices = list(devices if devices is not None else jax.local_devices())
        dtype = compute_dtype or checkpoint.read_meta(path)["model"].get("dtype", "float32")
        eng = engine_lib.Engine.from_checkpoint(
            path, _engine_config(cfg, dtype, devices), devices=devices
        )
        _check(eng.layout, eng.model_cfg)
        sampler = cls.__new__(cls)
        sampler._attach(eng, cfg)
        return sampler

    def with_config(self, cfg: SamplingConfig) -> SpeechSampler:
        """The same engine (parameters, devices) with other decoding settings."""
        sampler = SpeechSampler.__new__(SpeechSampler)
        sampler._attach(self.engine, cfg)
        return sampler

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
        lay = self.layout
        eoa = lay.special(token_layout_lib.END_AUDIO)
        requests = [
            engine_lib.Request(
                prompts.tts_prompt(t, lay),
                self.cfg.params(self.cfg.max_tokens(np.asarray(t).size), "speech", eoa),
                int(seed),
            )
            for t, seed in zip(texts, seeds, strict=True)
        ]
        out = [lay.ids_to_codes(c.tokens) for c in self.engine.generate(requests)]
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
        requests = [
            engine_lib.Request(
                np.concatenate([lay.bos_ids, lay.wrap_audio(np.asarray(c).reshape(-1))]),
                self.cfg.params(max_tokens, "text", lay.eos_id),
                int(seed),
            )
            for c, seed in zip(codes, seeds, strict=True)
        ]
        return [c.tokens for c in self.engine.generate(requests)]


def _check(layout: token_layout_lib.TokenLayout, model_cfg: glm.GLMConfig) -> None:
    if layout.num_audio_tokens == 0:
        raise ValueError(f"token layout {layout.name!r} has no speech tokens to sample")
    if model_cfg.vocab_size < layout.vocab_size:
        raise ValueError(
            f"model vocab_size {model_cfg.vocab_size} is smaller than token layout "
            f"{layout.name!r} ({layout.vocab_size} ids)"
        )


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
