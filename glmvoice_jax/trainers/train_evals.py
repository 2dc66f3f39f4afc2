"""Evaluation during training: ``config.evals`` run on the live, sharded parameters.

A config lists tasks, each a dict with ``task`` (story_cloze, spoken_qa, asr, tts — the tasks of
``glmvoice-eval``) and ``every_steps``, plus the task's inputs::

    config.evals = [
        dict(task="story_cloze", every_steps=500, modes="t2t,s2t", max_items=100,
             speech_tokenizer="gs://BUCKET/tokenizer"),
        dict(task="asr", every_steps=1000, items="/data/librispeech/test-clean", max_items=200,
             speech_tokenizer="gs://BUCKET/tokenizer"),
    ]

Optional keys: ``items`` (default: the task's bundled tiny set), ``max_items``, ``modes``,
``asr_judge``, ``max_new_tokens``, ``cache_dir`` (espeak-ng speech, default WORKDIR/eval_cache).

The engine and the scorer are built once on the trainer's mesh and rules and are handed the
current parameter arrays at each evaluation: nothing is copied to another device or reloaded from
a checkpoint. Results go to metrics.jsonl and TensorBoard as ``eval/<task>/<measure>`` (accuracy
and error rates as fractions). An evaluation that fails logs one line naming the task and the
error, and training goes on. Every process runs each evaluation (the arrays are global); only
process 0 writes the per-item JSONL (WORKDIR/evals/<task>-<step>.items.jsonl).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from absl import logging
from jax.sharding import Mesh

from glmvoice_jax.data import token_layout as token_layout_lib
from glmvoice_jax.evals import lm_tasks, story_cloze
from glmvoice_jax.inference import chat, engine, scoring
from glmvoice_jax.models import glm

TASKS = ("story_cloze", "spoken_qa", "asr", "tts")
_KEYS = {
    "task", "every_steps", "items", "max_items", "modes", "speech_tokenizer", "asr_judge",
    "max_new_tokens", "cache_dir",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EvalTask:
    task: str
    every_steps: int
    options: Mapping[str, Any]


def parse(evals: Sequence[Mapping[str, Any]] | None) -> list[EvalTask]:
    """Validates ``config.evals`` before the run starts.

    Raises:
      ValueError: naming the entry (``config.evals[i]``) and the key that is wrong.
    """
    out = []
    for i, raw in enumerate(evals or ()):
        where = f"config.evals[{i}]"
        entry = dict(raw.to_dict() if hasattr(raw, "to_dict") else raw)
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(_KEYS)}")
        if entry.get("task") not in TASKS:
            raise ValueError(f"{where}: task must be one of {TASKS}, not {entry.get('task')!r}")
        every = entry.get("every_steps")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{where}: every_steps must be an integer >= 1, got {every!r}")
        needs_tok = entry["task"] != "story_cloze" or "s2" in str(entry.get("modes") or "s2")
        if needs_tok and not entry.get("speech_tokenizer"):
            raise ValueError(f"{where}: task {entry['task']!r} needs speech_tokenizer=CKPT")
        task, every = entry.pop("task"), entry.pop("every_steps")
        out.append(EvalTask(task, every, entry))
    return out


class TrainEvals:
    """Runs the due tasks of ``config.evals`` on the trainer's parameters.

    Args:
      tasks: from ``parse``.
      model_cfg: the trained GLM's config.
      layout: its token layout.
      mesh, preset: the trainer's mesh and rules preset.
      param_shardings: the parameters' NamedShardings (``nnx.to_pure_dict`` tree).
      workdir: the run's workdir (per-item outputs, espeak-ng cache).
      text_checkpoint: a checkpoint recording the text tokenizer (``init_from``), for layouts
        whose text is not UTF-8 bytes.
    """

    def __init__(
        self,
        tasks: list[EvalTask],
        model_cfg: glm.GLMConfig,
        layout: token_layout_lib.TokenLayout,
        mesh: Mesh,
        preset: str,
        param_shardings: Any,
        workdir: str,
        text_checkpoint: str | None,
    ):
        self.tasks = tasks
        self.workdir = workdir
        self._live = None
        if not tasks:
            return
        if layout.text_is_utf8_bytes:
            codec = chat.text_codec("", layout)
        elif text_checkpoint:
            codec = chat.text_codec(text_checkpoint, layout)
        else:
            raise ValueError(
                "config.evals needs the text tokenizer: set init_from to the imported checkpoint "
                f"that records it (token layout {layout.name!r} is not UTF-8 bytes)"
            )
        dtype = str(model_cfg.param_dtype)
        config = engine.EngineConfig(
            dtype="bfloat16" if dtype == "bfloat16" else "float32",
            axis_rules=preset,
            mesh=tuple((name, int(size)) for name, size in mesh.shape.items()),
            max_context=4096,
        )
        eng_cfg = engine.Engine._model_config(model_cfg, config)
        self._engine = engine.Engine(eng_cfg, layout, None, param_shardings, mesh, config)
        self._scorer = scoring.Scorer.live(model_cfg, None, param_shardings, mesh, preset)
        self._codec = codec

    def due(self, step: int) -> list[EvalTask]:
        return [t for t in self.tasks if step % t.every_steps == 0]

    def run(self, step: int, params: Any) -> dict[str, float]:
        """Runs the tasks due at ``step``; returns ``eval/<task>/<measure>`` scalars."""
        self._engine.params = params
        self._scorer.params = params
        live = lm_tasks.LiveLM(self._engine, self._scorer, *self._codec)
        scalars: dict[str, float] = {}
        for t in self.due(step):
            start = time.perf_counter()
            try:
                result = self._one(t, live, step)
            except Exception as e:  # noqa: BLE001 - an eval never stops training
                msg = f"eval {t.task} at step {step} failed: {type(e).__name__}: {e}"
                logging.warning("%s", msg)
                if jax.process_index() == 0:
                    print(msg, flush=True)
                continue
            for k, v in result.items():
                measure = k.endswith(("_accuracy", "_accuracy_per_token")) or k in ("wer", "cer")
                if measure and isinstance(v, int | float):
                    scalars[f"eval/{t.task}/{k}"] = float(v)
            scalars[f"eval/{t.task}/seconds"] = time.perf_counter() - start
        return scalars

    def _one(self, t: EvalTask, live: lm_tasks.LiveLM, step: int) -> dict:
        o = dict(t.options)
        per_item = None
        if jax.process_index() == 0:
            per_item = os.path.join(self.workdir, "evals", f"{t.task}-{step}.items.jsonl")
        cache = o.pop("cache_dir", None) or os.path.join(self.workdir, "eval_cache")
        items = o.pop("items", None)
        modes = o.pop("modes", None)
        if isinstance(modes, str):
            modes = [m.strip() for m in modes.split(",") if m.strip()]
        if t.task == "story_cloze":
            return story_cloze.evaluate(
                live, items or story_cloze.DEMO_ITEMS, speech_tokenizer=o.get("speech_tokenizer"),
                cache_dir=cache, modes=modes or story_cloze.MODES,
                max_items=o.get("max_items"), per_item_output=per_item,
            )  # fmt: skip
        common = {k: o[k] for k in ("speech_tokenizer", "max_items") if k in o}
        if "max_new_tokens" in o and t.task != "tts":
            common["max_new_tokens"] = o["max_new_tokens"]
        if t.task == "spoken_qa":
            return lm_tasks.spoken_qa(
                live, items or lm_tasks.DEMO_QA_ITEMS, cache_dir=cache,
                modes=modes or lm_tasks.QA_MODES, asr_judge=o.get("asr_judge"),
                per_item_output=per_item, **common,
            )  # fmt: skip
        if t.task == "asr":
            return lm_tasks.asr(
                live, items or lm_tasks.DEMO_UTTERANCES, cache_dir=cache,
                per_item_output=per_item, **common,
            )  # fmt: skip
        return lm_tasks.tts(
            live, items or lm_tasks.DEMO_UTTERANCES, asr_judge=o.get("asr_judge"),
            per_item_output=per_item, **common,
        )  # fmt: skip
