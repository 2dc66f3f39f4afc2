r"""glmvoice-eval: evaluation tasks of a pre-trained GLM checkpoint.

Usage:
    glmvoice-eval --task story_cloze --checkpoint LM_CKPT [--speech_tokenizer TOK_CKPT] \
        [--items PATH] [--modes s2s,s2t,t2t] [--cache_dir DIR] [--max_items N] \
        [--output OUT.json] [--per_item OUT.items.jsonl]

Tasks:
  story_cloze  spoken StoryCloze-style likelihood choice between a correct and a wrong ending
               (glmvoice_jax/evals/story_cloze.py, docs/eval.md). ``--items`` defaults to the
               bundled
               demo set; s2s / s2t need ``--speech_tokenizer``.

Prints a table of accuracies; ``--output`` writes the summary as JSON and, unless ``--per_item``
names another path, the per-item scores next to it as ``<output minus .json>.items.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import flags

from glmvoice_jax.cli import doors
from glmvoice_jax.evals import story_cloze

TASKS = ("story_cloze",)
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
    "items", story_cloze.DEMO_ITEMS, "Items JSONL (docs/eval.md).", flag_values=FLAGS
)
flags.DEFINE_list("modes", list(story_cloze.MODES), "Modes: s2s, s2t, t2t.", flag_values=FLAGS)
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
    result = story_cloze.evaluate(
        FLAGS.checkpoint,
        FLAGS.items,
        speech_tokenizer=FLAGS.speech_tokenizer,
        cache_dir=FLAGS.cache_dir,
        modes=FLAGS.modes,
        max_items=FLAGS.max_items,
        per_item_output=per_item,
    )
    result = dict(result, task=FLAGS.task, items_path=FLAGS.items)
    if per_item:
        result["per_item"] = per_item
    print(format_table(result, FLAGS.items))
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
