"""glmvoice_jax.evals.lm_tasks: item readers, answer matching, the generation tasks end to end."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile

from glmvoice_jax.cli import evaluate
from glmvoice_jax.evals import lm_tasks

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
WHISPER_VQ = os.path.join(FIXTURES, "whisper_vq")
DEMO_WORKDIR = os.environ.get("GLMVOICE_DEMO_WORKDIR", "runs/demo")
NEEDS_ESPEAK = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox synthesise the items (make system-deps)",
)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_answer_matching_is_whole_words_after_normalisation():
    assert lm_tasks.answer_matches("It is Paris, of course.", ["paris"])
    assert lm_tasks.answer_matches("twenty-four hours", ["twenty four"])
    assert not lm_tasks.answer_matches("Parisian food", ["paris"])
    assert not lm_tasks.answer_matches("", ["blue"])


def test_bundled_sets_read():
    assert len(lm_tasks.read_qa_items(lm_tasks.DEMO_QA_ITEMS)) == 16
    assert len(lm_tasks.read_utterances(lm_tasks.DEMO_UTTERANCES, max_items=5)) == 5


def test_bad_items_name_the_line_and_field(tmp_path):
    path = _lines(tmp_path / "qa.jsonl", [{"id": "a", "question": "why?", "answers": []}])
    with pytest.raises(ValueError, match=r'qa.jsonl:1: field "answers"'):
        lm_tasks.read_qa_items(path)
    path = _lines(tmp_path / "u.jsonl", [{"id": "a", "text": "ok"}, {"id": "b", "text": "!!"}])
    with pytest.raises(ValueError, match=r'u.jsonl:2: field "text" must hold words'):
        lm_tasks.read_utterances(path)
    with pytest.raises(FileNotFoundError, match="neither a manifest file nor a folder"):
        lm_tasks.read_utterances(str(tmp_path / "missing"))


def test_librispeech_layout_is_read(tmp_path):
    chapter = tmp_path / "test-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    for uid in ("19-198-0001", "19-198-0000"):
        soundfile.write(str(chapter / f"{uid}.flac"), np.zeros(1600, np.float32), 16000)
    (chapter / "19-198.trans.txt").write_text("19-198-0000 HELLO THERE\n19-198-0001 GOOD DAY\n")
    items = lm_tasks.read_utterances(str(tmp_path))
    assert [(it.id, it.text) for it in items] == [
        ("19-198-0000", "HELLO THERE"),
        ("19-198-0001", "GOOD DAY"),
    ]
    assert items[0].audio.endswith("19-198-0000.flac")


@NEEDS_ESPEAK
def test_asr_and_spoken_qa_run_on_the_tiny_models(tiny_lm, tmp_path):
    """Both tasks run through the engine; a silent question is skipped and named, not fatal."""
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(8000, np.float32), 16000)
    qa = _lines(
        tmp_path / "qa.jsonl",
        [
            {"id": "q1", "question": "What color is grass?", "answers": ["green"]},
            {"id": "q2", "question": "Hush.", "answers": ["x"], "question_audio": "silent.wav"},
        ],
    )
    cache = str(tmp_path / "cache")
    per_item = str(tmp_path / "qa.items.jsonl")
    res = lm_tasks.spoken_qa(
        tiny_lm, qa, speech_tokenizer=WHISPER_VQ, cache_dir=cache, modes=["s2t"],
        max_new_tokens=8, per_item_output=per_item,
    )  # fmt: skip
    assert res["items"] == 1 and res["skipped"] == 1 and 0 <= res["s2t_accuracy"] <= 1
    rows = [json.loads(x) for x in _read(per_item).splitlines()]
    assert "silent" in rows[1]["skipped"] and isinstance(rows[0]["s2t"]["response"], str)
    utts = _lines(tmp_path / "u.jsonl", [{"id": "u1", "text": "a red apple"}])
    res = lm_tasks.asr(
        tiny_lm, utts, speech_tokenizer=WHISPER_VQ, cache_dir=cache, max_new_tokens=8
    )
    assert res["items"] == 1 and res["wer"] >= 0 and "cer" in res


def test_speech_tasks_need_a_tokenizer(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="needs --speech_tokenizer"):
        lm_tasks.asr(tiny_lm, lm_tasks.DEMO_UTTERANCES, speech_tokenizer=None, cache_dir="")


@pytest.mark.e2e
@pytest.mark.skipif(
    not os.path.isdir(os.path.join(DEMO_WORKDIR, "tokenizer")),
    reason="needs the make demo workdir (GLMVOICE_DEMO_WORKDIR, default runs/demo)",
)
@NEEDS_ESPEAK
def test_every_generation_task_through_the_command_line(tmp_path):
    """spoken_qa (s2t + s2s with the judge), asr and tts on the tiny demo models."""
    tok = os.path.join(DEMO_WORKDIR, "tokenizer")
    for task in ("spoken_qa", "asr", "tts"):
        out = str(tmp_path / f"{task}.json")
        argv = ["glmvoice-eval", f"--task={task}", f"--checkpoint={DEMO_WORKDIR}"]
        argv += [f"--speech_tokenizer={tok}", f"--cache_dir={tmp_path}", "--max_items=3"]
        result = evaluate.main(argv + [f"--output={out}"])
        assert json.loads(_read(out))["task"] == task and result["items"] == 3
        assert os.path.exists(str(tmp_path / f"{task}.items.jsonl"))


def test_official_qa_release_files_are_read(tmp_path):
    """WebQuestions' JSON array and TriviaQA's {"Data": [...]} document, as released."""
    webq = tmp_path / "webquestions.examples.test.json"
    webq.write_text(
        json.dumps(
            [
                {
                    "url": "http://www.freebase.com/view/en/jamaica",
                    "targetValue": '(list (description "Jamaican English") (description Patois))',
                    "utterance": "what does jamaican people speak?",
                },
                {"url": "u", "targetValue": "(list (description Paris))", "utterance": "capital?"},
            ]
        )
    )
    soundfile.write(str(tmp_path / "1.wav"), np.zeros(1600, np.float32), 16000)
    items = lm_tasks.read_qa_items(str(webq))
    assert [(it.id, it.answers) for it in items] == [
        ("0", ("Jamaican English", "Patois")),
        ("1", ("Paris",)),
    ]
    assert items[0].audio is None and items[1].audio == str(tmp_path / "1.wav")
    trivia = tmp_path / "verified-web.json"
    trivia.write_text(
        json.dumps(
            {
                "Data": [
                    {
                        "QuestionId": "tc_33",
                        "Question": "Which Lloyd Webber musical premiered in the US in 1994?",
                        "Answer": {"Value": "Sunset Boulevard", "Aliases": ["Sunset Blvd"]},
                    }
                ]
            }
        )
    )
    [item] = lm_tasks.read_qa_items(str(trivia))
    assert item.id == "tc_33" and item.answers == ("Sunset Boulevard", "Sunset Blvd")
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"questions": []}))
    with pytest.raises(ValueError, match="neither a WebQuestions array nor a TriviaQA"):
        lm_tasks.read_qa_items(str(bad))
