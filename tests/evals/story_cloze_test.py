"""glmvoice_jax.evals.story_cloze: sequence layout, scoring rule, item validation, audio sources."""

import json
import os
import shutil

import numpy as np
import pytest

from glmvoice_jax import audio
from glmvoice_jax.corpora import espeak, story_cloze_items
from glmvoice_jax.data import token_layout
from glmvoice_jax.evals import story_cloze
from glmvoice_jax.inference import scoring, speech_tokenization

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
WHISPER_VQ = os.path.join(FIXTURES, "whisper_vq")
LAYOUT = token_layout.get("demo")
BOS = LAYOUT.bos_ids  # [gMASK] <sop>
BOA, EOA = LAYOUT.special("<|begin_of_audio|>"), LAYOUT.special("<|end_of_audio|>")
NEEDS_ESPEAK = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="espeak-ng and sox synthesise the items (make system-deps)",
)


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def write_items(path, items):
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return str(path)


DEMO = story_cloze_items.make_items(3, seed=0)


def test_sequence_layout_is_the_pretraining_templates():
    ctx, end = np.array([1, 2, 3]), np.array([4, 5])
    ids, a, b = story_cloze.build_sequence("s2s", ctx, end, LAYOUT)
    off = LAYOUT.audio_offset
    assert ids.tolist() == BOS + [BOA, off + 1, off + 2, off + 3, off + 4, off + 5, EOA]
    assert (a, b) == (6, 8)
    ids, a, b = story_cloze.build_sequence("s2t", ctx, [32, 104, 105], LAYOUT)
    assert ids.tolist() == BOS + [BOA, off + 1, off + 2, off + 3, EOA, 32, 104, 105, LAYOUT.eos_id]
    assert ids[a:b].tolist() == [32, 104, 105]
    ids, a, b = story_cloze.build_sequence("t2t", [72, 105], [32, 104], LAYOUT)
    assert ids.tolist() == BOS + [72, 105, 32, 104, LAYOUT.eos_id] and (a, b) == (4, 6)
    with pytest.raises(ValueError, match="speech code 600 outside the codebook"):
        story_cloze.build_sequence("s2s", ctx, [600], LAYOUT)


def _manual_scores(lm, items, cache_dir):
    """(item id, mode, ending) -> summed log-prob, from sequences built by hand."""
    _, tok = speech_tokenization.load_model(WHISPER_VQ)
    parts = [(it["id"], p) for it in items for p in ("context", "correct", "wrong")]
    paths = [
        story_cloze.synthesis_path(it[p], cache_dir) for it in items for p in story_cloze.PARTS
    ]
    wavs = [audio.load_audio(p) for p in paths[::-1]]  # another batch order than evaluate's
    codes = dict(zip(parts[::-1], speech_tokenization.tokenize_waveforms(tok, wavs)))
    off = LAYOUT.audio_offset
    seqs, spans = {}, {}
    for it in items:
        ctx_speech = [BOA] + [off + int(c) for c in codes[it["id"], "context"]]
        for e in ("correct", "wrong"):
            text = list((" " + it[e]).encode())
            speech = [off + int(c) for c in codes[it["id"], e]]
            for mode, prefix, ending, suffix in (
                ("s2s", BOS + ctx_speech, speech, [EOA]),
                ("s2t", BOS + ctx_speech + [EOA], text, [LAYOUT.eos_id]),
                ("t2t", BOS + list(it["context"].encode()), text, [LAYOUT.eos_id]),
            ):
                seqs[it["id"], mode, e] = np.array(prefix + ending + suffix, np.int32)
                spans[it["id"], mode, e] = (len(prefix), len(prefix) + len(ending))
    keys = list(seqs)
    lps = scoring.Scorer(lm).score([seqs[k] for k in keys])
    return {k: float(lp[spans[k][0] - 1 : spans[k][1] - 1].sum()) for k, lp in zip(keys, lps)}


@NEEDS_ESPEAK
def test_accuracy_equals_manual_scoring_and_swapping_flips_decisions(lm, cache, tmp_path):
    items = write_items(tmp_path / "items.jsonl", DEMO)
    out = tmp_path / "per_item.jsonl"
    res = story_cloze.evaluate(
        lm, items, speech_tokenizer=WHISPER_VQ, cache_dir=cache, per_item_output=str(out)
    )
    assert res["items"] == 3 and res["skipped"] == 0 and res["modes"] == list(story_cloze.MODES)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    manual = _manual_scores(lm, DEMO, cache)
    for mode in story_cloze.MODES:
        wins = wins_mean = 0
        for it, row in zip(DEMO, rows):
            r = row[mode]
            for e in ("correct", "wrong"):
                assert r[f"{e}_logprob"] == pytest.approx(manual[it["id"], mode, e], abs=1e-3)
                assert r[f"{e}_mean"] == pytest.approx(r[f"{e}_logprob"] / r[f"{e}_tokens"])
            wins += manual[it["id"], mode, "correct"] > manual[it["id"], mode, "wrong"]
            wins_mean += r["correct_mean"] > r["wrong_mean"]
            assert r["correct_chosen"] == (r["correct_logprob"] > r["wrong_logprob"])
        assert res[f"{mode}_accuracy"] == pytest.approx(wins / 3)
        assert res[f"{mode}_accuracy_per_token"] == pytest.approx(wins_mean / 3)
    for it, row in zip(DEMO, rows):
        assert row["id"] == it["id"] and row["kind"] == it["kind"]
        assert row["audio"]["context"] == story_cloze.synthesis_path(it["context"], cache)

    # The same items with the endings swapped: the same scores, the other decision.
    swapped = [dict(it, correct=it["wrong"], wrong=it["correct"]) for it in DEMO]
    out2 = tmp_path / "swapped.jsonl"
    res2 = story_cloze.evaluate(
        lm,
        write_items(tmp_path / "swapped_items.jsonl", swapped),
        speech_tokenizer=WHISPER_VQ,
        cache_dir=cache,
        per_item_output=str(out2),
    )
    for row, row2 in zip(rows, [json.loads(x) for x in out2.read_text().splitlines()]):
        for mode in story_cloze.MODES:
            a, b = row[mode], row2[mode]
            assert b["correct_logprob"] == pytest.approx(a["wrong_logprob"], abs=1e-5)
            assert b["correct_chosen"] != a["correct_chosen"]
            assert b["correct_chosen_per_token"] != a["correct_chosen_per_token"]
    for mode in story_cloze.MODES:
        assert res[f"{mode}_accuracy"] + res2[f"{mode}_accuracy"] == pytest.approx(1.0)


def test_user_audio_is_used_and_unreadable_audio_is_skipped(lm, tmp_path, monkeypatch):
    # No espeak-ng on PATH: every part of a kept item must come from the given files.
    monkeypatch.setenv("PATH", str(tmp_path / "no_tools"))
    (tmp_path / "broken.wav").write_text("not audio")
    shutil.copytree(os.path.join(WHISPER_VQ, "audio"), tmp_path / "audio")
    user = dict(DEMO[0], context_audio="audio/v2_rate.wav")
    user.update(correct_audio="audio/v0_hi.wav", wrong_audio="audio/v1_fox.wav")
    broken = dict(DEMO[1], context_audio="broken.wav", correct_audio="audio/v0_hi.wav")
    broken["wrong_audio"] = "audio/v4_num.wav"
    items = write_items(tmp_path / "items.jsonl", [user, broken])
    out = tmp_path / "rows.jsonl"
    cache = tmp_path / "cache"
    res = story_cloze.evaluate(
        lm,
        items,
        speech_tokenizer=WHISPER_VQ,
        cache_dir=str(cache),
        modes=("s2s",),
        per_item_output=str(out),
    )
    assert res["items"] == 1 and res["skipped"] == 1
    assert res["skipped_reasons"] == {"unreadable_audio": 1} and "s2t_accuracy" not in res
    kept, skipped = [json.loads(x) for x in out.read_text().splitlines()]
    assert kept["audio"]["correct"] == str(tmp_path / "audio" / "v0_hi.wav")
    with open(os.path.join(WHISPER_VQ, "expected_tokens.jsonl")) as f:
        counts = {r["id"]: len(r["tokens"]) for r in map(json.loads, f)}
    assert kept["s2s"]["correct_tokens"] == counts["v0_hi"]
    assert kept["s2s"]["wrong_tokens"] == counts["v1_fox"]
    assert skipped["id"] == DEMO[1]["id"] and "context:" in skipped["skipped"]
    assert "broken.wav" in skipped["skipped"] and "s2s" not in skipped
    assert not cache.exists()  # nothing was synthesised
    # With a part left to synthesise and no espeak-ng: a clear error.
    items = write_items(tmp_path / "items2.jsonl", [dict(user, wrong_audio=None)])
    with pytest.raises(FileNotFoundError, match="espeak-ng"):
        story_cloze.evaluate(
            lm, items, speech_tokenizer=WHISPER_VQ, cache_dir=str(cache), modes=("s2s",)
        )


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"id": "a", "context": "c", "correct": "x", "wrong": "y"}', "{"], r":2: not valid JSON"),
        (['{"context": "c", "correct": "x", "wrong": "y"}'], r':1: field "id" must be'),
        (['{"id": "a", "context": "c", "correct": "x"}'], r':1: field "wrong" must be'),
        (['{"id": "a", "context": " ", "correct": "x", "wrong": "y"}'], r':1: field "context"'),
        (['{"id": 1, "context": "c", "correct": "x", "wrong": "x"}'], r':1: fields "correct"'),
        (
            ["", '{"id": "a", "context": "c", "correct": "x", "wrong": "y", "wrong_audio": 3}'],
            r':2: field "wrong_audio" must be',
        ),
        (
            ['{"id": "a", "context": "c", "correct": "x", "wrong": "y"}'] * 2,
            r':2: field "id" \'a\' repeats the id of line 1',
        ),
        (["[1]"], r":1: expected a JSON object"),
        ([""], r"holds no items"),
    ],
)
def test_bad_items_name_the_line_and_field(tmp_path, lines, message):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        story_cloze.read_items(str(path))


def test_user_errors(lm, tmp_path, write_lm):
    items = write_items(tmp_path / "items.jsonl", DEMO)
    with pytest.raises(ValueError, match="need a speech tokenizer"):
        story_cloze.evaluate(lm, items, speech_tokenizer=None, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="subset of"):
        story_cloze.evaluate(lm, items, speech_tokenizer=None, cache_dir="", modes=("s2x",))
    small = token_layout.TokenLayout(
        name="demo32",
        text_vocab_size=256,
        specials=LAYOUT.specials,
        audio_offset=512,
        num_audio_tokens=32,
        vocab_size=1024,
    )
    lm32 = write_lm(tmp_path / "lm32", small)
    with pytest.raises(ValueError, match="has 32 speech codes .* codebook of 64"):
        story_cloze.evaluate(
            lm32, items, speech_tokenizer=WHISPER_VQ, cache_dir=str(tmp_path), modes=("s2s",)
        )


def test_demo_items_are_valid_and_use_the_corpus_words():
    items = story_cloze.read_items(story_cloze.DEMO_ITEMS)
    assert len(items) == 100 and story_cloze.DEMO_ITEMS == story_cloze_items.DEMO_ITEMS_PATH
    # The committed file is what the generator writes.
    regenerated = story_cloze_items.make_items(100, seed=0)
    with open(story_cloze.DEMO_ITEMS) as f:
        assert [json.loads(line) for line in f] == regenerated
    vocab = story_cloze_items.corpus_vocabulary()
    for it in items:
        words = f"{it.context} {it.correct} {it.wrong}".lower().replace(".", "").split()
        assert set(words) <= vocab
        assert len(it.correct.split()) == len(it.wrong.split())  # minimal pairs


@NEEDS_ESPEAK
def test_release_layouts_are_read_and_scored(lm, tmp_path):
    """SpokenStoryCloze release folders: whole stories (s2s as TWIST) and the cross-modal set."""

    whole, cross = tmp_path / "sSC", tmp_path / "cm" / "part0"
    whole.mkdir()
    cross.mkdir(parents=True)
    for i, it in enumerate(DEMO[:2]):
        for suffix, ending in (("correct", it["correct"]), ("incorrect", it["wrong"])):
            espeak.synthesize(f"{it['context']} {ending}", str(whole / f"{i}_{suffix}.wav"),
                              *story_cloze.ESPEAK_VOICE)  # fmt: skip
        for suffix, text in (("mutual", it["context"]), ("correct", it["correct"]),
                             ("incorrect", it["wrong"])):  # fmt: skip
            espeak.synthesize(text, str(cross / f"{i}_{suffix}.wav"), *story_cloze.ESPEAK_VOICE)
            (cross / f"{i}_{suffix}.txt").write_text(text + "\n")
    items = story_cloze.read_release(str(whole))
    assert [it.id for it in items] == ["0", "1"] and all(it.whole for it in items)
    res = story_cloze.evaluate(
        lm, str(whole), speech_tokenizer=WHISPER_VQ, cache_dir=str(tmp_path), modes=["s2s"]
    )
    assert res["items"] == 2 and 0 <= res["s2s_accuracy"] <= 1
    with pytest.raises(ValueError, match="only mode s2s applies"):
        story_cloze.evaluate(
            lm, str(whole), speech_tokenizer=WHISPER_VQ, cache_dir=str(tmp_path), modes=["s2t"]
        )
    items = story_cloze.read_release(str(tmp_path / "cm"))
    assert [it.id for it in items] == ["part0/0", "part0/1"] and not items[0].whole
    assert items[0].correct == DEMO[0]["correct"] and set(items[0].audio) == set(story_cloze.PARTS)
    res = story_cloze.evaluate(
        lm, str(tmp_path / "cm"), speech_tokenizer=WHISPER_VQ, cache_dir=str(tmp_path),
        modes=["s2s", "s2t"],
    )  # fmt: skip
    assert res["items"] == 2 and res["skipped"] == 0
    with pytest.raises(ValueError, match="no IDX_correct.wav"):
        story_cloze.read_release(str(tmp_path / "cache_empty_dir_that_does_not_exist"))
