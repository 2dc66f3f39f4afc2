"""The tiny SFT demo's plumbing on random tiny models (the real figures come from `make demo`)."""

import json
import os
import shutil

import pytest

from glmvoice_jax.workflows import sft_demo

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="needs espeak-ng and sox",
)


def test_heldout_pairs_are_unseen_combinations():
    pairs = sft_demo.qa_pairs()
    train, heldout = sft_demo.split(pairs, 150, 16)
    assert not {p[0] for p in train} & {p[0] for p in heldout}
    pid, q, a = pairs[0]
    assert q.startswith("Where is the ") and a.startswith("The ") and q[13:-1] in a


@pytest.mark.e2e  # slow (make test-e2e)
def test_demo_runs_end_to_end_on_random_models(tmp_path, write_lm):
    demo = tmp_path / "demo"
    write_lm(str(demo / "checkpoints"))
    os.symlink(os.path.join(FIXTURES, "whisper_vq"), demo / "tokenizer")
    out = tmp_path / "out"
    report = sft_demo.run(str(demo), str(out), num_train=4, num_heldout=2, steps=2, dropout=0.5)
    assert report["records"] == {"speech_output": 4, "text_output": 4}
    for when in ("before", "after"):
        r = report[when]
        assert 0 <= r["well_formed"] <= 1 and r["answer_cer"] >= 0 and len(r["replies"]) == 2
    assert json.loads((out / "report.json").read_text())["steps"] == 2
    with open(out / "dialogues" / "heldout.jsonl") as f:
        assert len(f.readlines()) == 2
