"""glmvoice-eval: the table, the output files and usage errors."""

import json
import sys

import pytest

from glmvoice_jax.cli import evaluate
from glmvoice_jax.evals import story_cloze


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


def test_text_mode_on_the_demo_items(lm, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    result = evaluate.main(
        ["glmvoice-eval", "--task", "story_cloze", "--checkpoint", lm, "--modes", "t2t",
         "--max_items", "6", "--cache_dir", str(tmp_path / "cache"), "--output", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("story_cloze: 6 items (0 skipped) from ")
    assert printed[0].endswith("story_cloze_demo.jsonl") and printed[2].startswith("t2t ")
    saved = json.loads(out.read_text())
    assert saved == result and saved["items"] == 6 and 0 <= saved["t2t_accuracy"] <= 1
    assert saved["items_path"] == story_cloze.DEMO_ITEMS and saved["task"] == "story_cloze"
    rows = (tmp_path / "res" / "eval.items.jsonl").read_text().splitlines()
    assert saved["per_item"] == str(tmp_path / "res" / "eval.items.jsonl") and len(rows) == 6
    wins = sum(json.loads(r)["t2t"]["correct_chosen"] for r in rows)
    assert saved["t2t_accuracy"] == pytest.approx(wins / 6)
    assert f"{100 * wins / 6:.1f}%" in printed[2]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "missing required flag --checkpoint"),
        (["--checkpoint", "CKPT", "--modes", "s2s,x2y"], "must be a non-empty subset"),
        (["--checkpoint", "CKPT", "--items", "/nonexistent.jsonl"], "does not exist"),
        (["--checkpoint", "CKPT"], "need a speech tokenizer checkpoint"),
        (["--checkpoint", "CKPT", "--max_items", "0"], "--max_items must be >= 1"),
        (["--checkpoint", "CKPT", "--task", "wugs"], "task"),
    ],
)
def test_usage_errors_exit_1_with_one_line(lm, tmp_path, capsys, monkeypatch, args, message):
    args = [lm if a == "CKPT" else a for a in args]
    monkeypatch.setattr(sys, "argv", ["glmvoice-eval", *args, "--cache_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        evaluate.run()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("glmvoice-eval: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
