import glob
import json
import pathlib

import numpy as np
import pytest
from array_record.python import array_record_module

from glmvoice_jax.corpora import dialogue_records
from glmvoice_jax.data import prompts, records, token_layout
from glmvoice_jax.inference import chat_template

LAYOUT = token_layout.get("demo_chat")
SYS, USER, ASSISTANT = 261, 262, 263
BOA, EOA = LAYOUT.special("<|begin_of_audio|>"), LAYOUT.special("<|end_of_audio|>")


def _read(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        reader = array_record_module.ArrayRecordReader(path)
        out += [records.decode(b, where=path) for b in reader.read_all()]
        reader.close()
    return out


def _speech(ids):
    return [i + LAYOUT.audio_offset for i in ids]


def test_streaming_reply_is_13_text_then_26_speech_and_the_rest_back_to_back():
    text, codes = list(range(30)), list(range(100))
    ids, is_speech = prompts.streaming_reply(text, codes, LAYOUT, what="r")
    want = (
        text[:13] + _speech(codes[:26]) + text[13:26] + _speech(codes[26:52])
        + text[26:] + _speech(codes[52:])
    )  # fmt: skip
    assert ids.tolist() == want
    assert is_speech.tolist() == [i >= LAYOUT.audio_offset for i in want]
    # The speech runs out first: the rest of the text follows back to back.
    ids, is_speech = prompts.streaming_reply(text, codes[:20], LAYOUT, what="r")
    assert ids.tolist() == text[:13] + _speech(codes[:20]) + text[13:]
    # Exactly one block of each: no empty blocks anywhere.
    ids, _ = prompts.streaming_reply(text[:13], codes[:26], LAYOUT, what="r")
    assert ids.tolist() == text[:13] + _speech(codes[:26])
    with pytest.raises(ValueError, match="no speech tokens"):
        prompts.streaming_reply(text, [], LAYOUT, what="r")


def _template():
    return chat_template.ChatTemplate.for_layout(LAYOUT, lambda s: list(s.encode()), "chat")


def test_two_turn_dialogue_follows_the_chat_template_with_two_masks():
    turns = dialogue_records.parse_dialogue(
        {
            "turns": [
                {"role": "user", "speech": [1, 2]},
                {"role": "assistant", "text": "Hi", "speech": [3, 4, 5]},
                {"role": "user", "text": "ok?"},
                {"role": "assistant", "text": "Yes", "speech": [6]},
            ]
        },
        {},
        LAYOUT.num_audio_tokens,
    )
    tmpl = _template()
    tokens, classes, outlasts = dialogue_records.dialogue_tokens(
        turns, None, tmpl, lambda s: list(s.encode())
    )
    sys_prompt = chat_template.SYSTEM_PROMPTS["speech"]  # the first user turn is speech
    header = [ASSISTANT] + list(b"streaming_transcription\n")
    reply1 = list(b"Hi") + _speech([3, 4, 5])
    reply2 = list(b"Yes") + _speech([6])
    want = (
        LAYOUT.bos_ids + [SYS] + list(("\n" + sys_prompt).encode()) + [USER] + list(b"\n")
        + [BOA, 513, 514, EOA] + header + reply1
        + [USER] + list(b"\nok?") + header + reply2 + [USER]
    )  # fmt: skip
    assert tokens.tolist() == want
    # The prompt of the second turn is exactly what glmvoice-chat would feed after turn 1.
    n1 = len(want) - len(header + reply2 + [USER]) - len(list(b"\nok?")) - 1
    assert tmpl.chat_prompt(want[:n1], chat_template.UserTurn(text="ok?"), None) == (
        want[: n1 + 1 + 4] + header
    )
    assert not outlasts
    ex = dialogue_records.sft_examples(tokens, classes, source="sft")
    speech_ex, text_ex = ex["speech_output"], ex["text_output"]
    assert speech_ex.kind == "sft_speech" and text_ex.kind == "sft_text"
    assert np.array_equal(speech_ex.tokens, text_ex.tokens)
    speech_targets = tokens[speech_ex.loss_mask == 1].tolist()
    text_targets = tokens[text_ex.loss_mask == 1].tolist()
    # Each reply's end (<|user|>) counts with the speech that precedes it.
    assert speech_targets == _speech([3, 4, 5]) + [USER] + _speech([6]) + [USER]
    assert text_targets == list(b"Hi") + list(b"Yes")
    # Nothing outside the assistant turns carries loss, and the copies never overlap.
    assert not (speech_ex.loss_mask & text_ex.loss_mask).any()
    in_reply = np.zeros(len(tokens), bool)
    start1 = len(want) - len(reply2) - 1 - len(header) - 4 - 1 - len(reply1)
    in_reply[start1 : start1 + len(reply1) + 1] = True
    in_reply[len(want) - len(reply2) - 1 :] = True
    assert not ((speech_ex.loss_mask | text_ex.loss_mask).astype(bool) & ~in_reply).any()


def test_system_prompt_of_the_dialogue_and_of_text_input():
    turns = dialogue_records.parse_dialogue(
        {
            "turns": [
                {"role": "user", "text": "q"},
                {"role": "assistant", "text": "a", "speech": [1]},
            ]
        },
        {},
        512,
    )
    tokens, _, _ = dialogue_records.dialogue_tokens(
        turns, None, _template(), lambda s: list(s.encode())
    )
    text_sys = ("\n" + chat_template.SYSTEM_PROMPTS["text"]).encode()
    assert bytes(tokens[3 : 3 + len(text_sys)].tolist()) == text_sys
    tokens, _, _ = dialogue_records.dialogue_tokens(
        turns, "Be brief.", _template(), lambda s: list(s.encode())
    )
    assert tokens[2:14].tolist() == [SYS] + list(b"\nBe brief.") + [USER]


def test_job_writes_two_copies_lists_bad_lines_and_resumes(tmp_path):
    good = {
        "id": "g",
        "turns": [
            {"role": "user", "audio": "q1"},
            {"role": "assistant", "text": "fine " * 5, "audio": "a1"},
        ],
    }
    lines = [json.dumps({**good, "id": f"g{i}"}) for i in range(6)]
    lines[1] = "{not json"
    lines[2] = json.dumps({"id": "solo", "turns": [{"role": "user", "text": "hello?"}]})
    lines[3] = json.dumps(
        {"id": "noaudio", "turns": [good["turns"][0], {**good["turns"][1], "audio": "lost"}]}
    )
    lines[4] = json.dumps(
        {"id": "mute", "turns": [good["turns"][0], {"role": "assistant", "text": "x"}]}
    )
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text("\n".join(lines) + "\n")
    toks = tmp_path / "tok.jsonl"
    toks.write_text(
        json.dumps({"id": "q1", "tokens": [5, 6, 7]})
        + "\n"
        + json.dumps({"id": "a1", "tokens": list(range(60))})
        + "\n"
    )
    out = tmp_path / "sft"
    kw = dict(
        tokenizer="bytes",
        layout="demo_chat",
        speech_tokens=str(toks),
        num_shards=2,
        max_tokens=4096,
        process_index=0,
        process_count=1,
        progress=False,
    )
    res = dialogue_records.write_dialogue_records(str(dialogues), str(out), **kw)
    assert set(res) == {"speech_output", "text_output"}
    for copy, kind in dialogue_records.COPIES.items():
        plan, totals = res[copy]
        assert totals["records"] == 2 and totals["errors"] == 4
        assert totals["errors_by_reason"] == {
            "bad_json": 1,
            "no_assistant_turn": 1,
            "audio_not_tokenized": 1,
            "empty_turn": 1,
        }
        exs = _read(plan.pattern())
        assert [e.kind for e in exs] == [kind, kind]
        assert all(e.loss_mask.sum() > 0 for e in exs)
        errs = [
            json.loads(line)
            for p in sorted(glob.glob(str(out / copy / "*.errors.jsonl")))
            for line in pathlib.Path(p).read_text().splitlines()
        ]
        by_id = {e["id"]: e for e in errs}
        assert f"{dialogues}:4" in by_id["noaudio"]["detail"]
        assert "turns[1].audio 'lost'" in by_id["noaudio"]["detail"]
        assert "turns[1]" in by_id["mute"]["detail"] and f"{dialogues}:5" in by_id["mute"]["detail"]
    speech_ex = _read(res["speech_output"][0].pattern())[0]
    text_ex = _read(res["text_output"][0].pattern())[0]
    assert np.array_equal(speech_ex.tokens, text_ex.tokens)
    assert int(speech_ex.loss_mask.sum()) == 60 + 1 and int(text_ex.loss_mask.sum()) == 25
    # A rerun skips the finished shards and leaves the bytes as they were.
    before = {p: p.read_bytes() for p in out.rglob("*.array_record")}
    res2 = dialogue_records.write_dialogue_records(str(dialogues), str(out), **kw)
    assert res2["speech_output"][1]["skipped"] == 2
    assert {p: p.read_bytes() for p in out.rglob("*.array_record")} == before


def test_layout_without_roles_is_refused_at_start(tmp_path):
    (tmp_path / "d.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="role tokens"):
        dialogue_records.write_dialogue_records(
            str(tmp_path / "d.jsonl"), str(tmp_path / "o"), tokenizer="bytes", layout="demo",
            process_index=0, process_count=1, progress=False,
        )  # fmt: skip


def _write_small_job(tmp_path, lines):
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    toks = tmp_path / "tok.jsonl"
    toks.write_text(json.dumps({"id": "a", "tokens": list(range(30))}) + "\n")
    out = tmp_path / "sft"
    res = dialogue_records.write_dialogue_records(
        str(dialogues), str(out), tokenizer="bytes", layout="demo_chat", speech_tokens=str(toks),
        num_shards=1, max_tokens=4096, process_index=0, process_count=1, progress=False,
    )  # fmt: skip
    return out, res


def test_style_tags_are_checked_and_counted(tmp_path):
    turns = [
        {"role": "user", "text": "Say it gladly."},
        {"role": "assistant", "text": "Ok.", "audio": "a"},
    ]
    lines = [
        {"id": "s1", "style": {"emotion": "happy", "speed": "slow"}, "turns": turns},
        {"id": "s2", "style": {"emotion": "happy"}, "turns": turns},
        {"id": "s3", "style": {"mood": "happy"}, "turns": turns},
        {"id": "s4", "style": {"speed": ""}, "turns": turns},
    ]  # fmt: skip
    out, res = _write_small_job(tmp_path, lines)
    _, totals = res["speech_output"]
    assert totals["records"] == 2 and totals["errors_by_reason"] == {"bad_style": 2}
    (stats,) = glob.glob(str(out / "speech_output" / "*.stats.json"))
    extra = json.loads(pathlib.Path(stats).read_text())["extra"]
    assert extra["style.emotion=happy"] == 2 and extra["style.speed=slow"] == 1
    errs = pathlib.Path(glob.glob(str(out / "speech_output" / "*.errors.jsonl"))[0]).read_text()
    assert "style.mood: unknown key" in errs and "style.speed must be a non-empty" in errs


def test_records_made_with_another_tokenizer_are_refused(tmp_path):
    turns = [{"role": "user", "text": "Hi?"}, {"role": "assistant", "text": "Hi.", "audio": "a"}]
    out, _ = _write_small_job(tmp_path, [{"id": "d", "turns": turns}])
    dirs = [str(out / c) for c in dialogue_records.COPIES] + [str(tmp_path)]  # + a non-job folder
    as_bytes = chat_template.ChatTemplate.for_layout(LAYOUT, lambda t: list(t.encode()), "chat")
    assert dialogue_records.check_sources(dirs, as_bytes, "UTF-8 bytes") == 2
    # Another tokenizer: the same text, other ids (here: every byte shifted by one).
    other = chat_template.ChatTemplate.for_layout(
        LAYOUT, lambda t: [(b + 1) % 256 for b in t.encode()], "chat"
    )
    with pytest.raises(
        ValueError, match=r"speech-input chat prompt \(tokenizer 'bytes'.*position 3: id 10 vs 11"
    ):
        dialogue_records.check_sources(dirs, other, "checkpoint X's tokenizer")
