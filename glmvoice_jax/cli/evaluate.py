r"""glmvoice-eval: evaluation tasks of a pre-trained GLM checkpoint.

Usage:
    glmvoice-eval --task story_cloze --checkpoint LM_CKPT [--speech_tokenizer TOK_CKPT] \
        [--items PATH] [--modes s2s,s2t,t2t] [--cache_dir DIR] [--max_items N] \
        [--output OUT.json] [--per_item OUT.items.jsonl]

    glmvoice-eval --task spoken_qa --checkpoint LM_CKPT --speech_tokenizer TOK_CKPT \
        [--items QA.jsonl] [--modes s2t,s2s] [--asr_judge TOK_CKPT] [--output OUT.json]
    glmvoice-eval --task asr --checkpoint LM_CKPT --speech_tokenizer TOK_CKPT \
        [--items MANIFEST.jsonl | LIBRISPEECH_DIR] [--output OUT.json]
    glmvoice-eval --task tts --checkpoint LM_CKPT --speech_tokenizer TOK_CKPT \
        [--items MANIFEST.jsonl | LIBRISPEECH_DIR] [--asr_judge TOK_CKPT] [--output OUT.json]

Tasks (the paper's base-model tables, glm4voice.md §9; docs/eval.md):
  story_cloze  Table 3: spoken StoryCloze / Topic-StoryCloze likelihood choice between a correct
               and a wrong ending (glmvoice_jax/evals/story_cloze.py); modes s2s, s2t, t2t.
  spoken_qa    Table 4: spoken questions answered in text (s2t) or speech (s2s, transcribed by
               the ASR judge); accuracy by answer matching (glmvoice_jax/evals/lm_tasks.py).
  asr          Table 5: ASR through the LM with the pre-training prompt; WER / CER.
  tts          Table 5: TTS through the LM; WER / CER of the judge's transcript.
``--items`` defaults to each task's bundled tiny set (espeak-ng speech, synthesised into
``--cache_dir``); the speech tasks need ``--speech_tokenizer``.

Prints a table of accuracies; ``--output`` writes the summary as JSON and, unless ``--per_item``
names another path, the per-item scores next to it as ``<output minus .json>.items.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.evals import lm_tasks, story_cloze
from glmvoice_jax.inference import engine

TASKS = ("story_cloze", "spoken_qa", "asr", "tts")
DEFAULT_CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "glmvoice_jax",
    "story_cloze",
)

FLAGS = flags.FlagValues()
flags.DEFINE_enum("task", "story_cloze", TASKS, "Evaluation task.", flag_values=FLAGS)
flags.DEFINE_string(
    "checkpoint", None, "LM checkpoint (manager root or step dir).", flag_values=FLAGS
)
flags.DEFINE_string(
    "speech_tokenizer", None, "Speech tokenizer checkpoint (s2s / s2t modes).", flag_values=FLAGS
)
flags.DEFINE_string(
    "items",
    None,
    "Items JSONL or LibriSpeech folder (default: the task's tiny set).",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "modes",
    None,
    "story_cloze: s2s, s2t, t2t; spoken_qa: s2t, s2s (default: all).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "asr_judge",
    None,
    "Tokenizer checkpoint whose ASR head transcribes speech answers (default: --speech_tokenizer).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "max_new_tokens", None, "Generation limit (default: per task).", flag_values=FLAGS
)
flags.DEFINE_enum(
    "dtype",
    "float32",
    ["float32", "bfloat16"],
    "LM dtype of the generation tasks.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "axis_rules", "fsdp", "Sharding preset of the generation tasks.", flag_values=FLAGS
)
flags.DEFINE_string("cache_dir", DEFAULT_CACHE, "Cache of synthesised speech.", flag_values=FLAGS)
flags.DEFINE_integer("max_items", None, "Evaluate only the first N items.", flag_values=FLAGS)
flags.DEFINE_string("output", None, "Summary JSON.", flag_values=FLAGS)
flags.DEFINE_string(
    "per_item", None, "Per-item JSONL (default: next to --output).", flag_values=FLAGS
)


def format_table(result: dict, items_path: str) -> str:
    """The printed summary: one row per mode, accuracy by summed and by per-token log-prob."""
    lines = [
        f"story_cloze: {result['items']} items ({result['skipped']} skipped) from {items_path}",
        f"{'mode':<6}{'accuracy':>10}{'per-token':>11}",
    ]
    for mode in result["modes"]:
        acc, mean = result[f"{mode}_accuracy"], result[f"{mode}_accuracy_per_token"]
        lines.append(f"{mode:<6}{100 * acc:>9.1f}%{100 * mean:>10.1f}%")
    if result["skipped_reasons"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result["skipped_reasons"].items()))
        lines.append(f"skipped: {reasons}")
    return "\n".join(lines)


def _generation_task(per_item: str | None) -> dict:
    """spoken_qa / asr / tts (glmvoice_jax/evals/lm_tasks.py) with the command line's settings."""
    config = engine.EngineConfig(dtype=FLAGS.dtype, axis_rules=FLAGS.axis_rules, max_context=4096)
    common = dict(
        speech_tokenizer=FLAGS.speech_tokenizer,
        max_items=FLAGS.max_items,
        config=config,
        per_item_output=per_item,
    )
    if FLAGS.max_new_tokens is not None and FLAGS.task != "tts":
        common["max_new_tokens"] = FLAGS.max_new_tokens
    if FLAGS.task == "spoken_qa":
        items = FLAGS.items or lm_tasks.DEMO_QA_ITEMS
        modes = FLAGS.modes or list(lm_tasks.QA_MODES)
        result = lm_tasks.spoken_qa(
            FLAGS.checkpoint, items, cache_dir=FLAGS.cache_dir, modes=modes,
            asr_judge=FLAGS.asr_judge, **common,
        )  # fmt: skip
    elif FLAGS.task == "asr":
        items = FLAGS.items or lm_tasks.DEMO_UTTERANCES
        result = lm_tasks.asr(FLAGS.checkpoint, items, cache_dir=FLAGS.cache_dir, **common)
    else:
        items = FLAGS.items or lm_tasks.DEMO_UTTERANCES
        result = lm_tasks.tts(FLAGS.checkpoint, items, asr_judge=FLAGS.asr_judge, **common)
    return dict(result, items_path=items)


def main(argv: Sequence[str]) -> dict:
    """Parses ``argv`` (program name first) and runs the task. Errors propagate as exceptions."""
    FLAGS.unparse_flags()
    FLAGS(list(argv))
    doors.require(FLAGS, ("checkpoint",))
    if FLAGS.max_items is not None and FLAGS.max_items < 1:
        raise flags.IllegalFlagValueError(f"--max_items must be >= 1, got {FLAGS.max_items}")
    per_item = FLAGS.per_item
    if per_item is None and FLAGS.output:
        per_item = os.path.splitext(FLAGS.output)[0] + ".items.jsonl"
    if FLAGS.task == "story_cloze":
        items = FLAGS.items or story_cloze.DEMO_ITEMS
        result = story_cloze.evaluate(
            FLAGS.checkpoint,
            items,
            speech_tokenizer=FLAGS.speech_tokenizer,
            cache_dir=FLAGS.cache_dir,
            modes=FLAGS.modes or list(story_cloze.MODES),
            max_items=FLAGS.max_items,
            per_item_output=per_item,
        )
        result = dict(result, task=FLAGS.task, items_path=items)
        print(format_table(result, items))
    else:
        result = _generation_task(per_item)
        print(lm_tasks.table_line(result))
    if per_item:
        result["per_item"] = per_item
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return result


def run() -> None:
    """Console-script entry point (cli/doors.py: --help, user errors as one line, exit 1)."""
    doors.run(main, __doc__, flag_values=FLAGS)


if __name__ == "__main__":
    run()
