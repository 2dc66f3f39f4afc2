import glob
import json
import os
import pathlib
import subprocess
import sys

import pytest
from array_record.python import array_record_module

from glmvoice_jax.corpora import shard_job, speech_records, text_records
from glmvoice_jax.data import records, token_layout

LAYOUT = token_layout.get("demo")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        reader = array_record_module.ArrayRecordReader(path)
        out += [records.decode(b, where=path) for b in reader.read_all()]
        reader.close()
    return out


def _bytes(out_dir):
    return {
        p.name: p.read_bytes()
        for p in sorted(pathlib.Path(out_dir).iterdir())
        if p.name != "job.json"
    }


@pytest.fixture(scope="module")
def text_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("text_in")
    lines = [
        json.dumps({"id": f"doc{i}", "text": f"Document {i}: " + "words " * (i % 7)})
        for i in range(40)
    ]
    lines[3] = json.dumps({"id": "blank", "text": "   "})
    lines[8] = "{broken json"
    lines[12] = json.dumps({"id": "long", "text": "x" * 500})
    path = d / "docs.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe bad bytes\n")
    return str(path)


def test_text_job_writes_records_errors_and_stats(text_input, tmp_path):
    out = str(tmp_path / "text")
    plan, totals = text_records.write_text_records(
        text_input,
        out,
        tokenizer="bytes",
        layout="demo",
        num_shards=3,
        max_tokens=200,
        process_index=0,
        process_count=1,
        progress=False,
    )
    docs = _read(plan.pattern())
    assert totals["records"] == len(docs) == 37 and totals["written"] == 3
    assert totals["errors_by_reason"] == {
        "empty_text": 1,
        "bad_json": 1,
        "over_long": 1,
        "undecodable": 1,
    }
    first = docs[0]
    assert first.kind == "text" and first.loss_mask.all()
    assert first.tokens[:2].tolist() == LAYOUT.bos_ids and first.tokens[-1] == LAYOUT.eos_id
    assert bytes(first.tokens[2:-1].tolist()).decode() == "Document 0: "
    errors = [
        json.loads(x)
        for p in sorted(glob.glob(f"{out}/*.errors.jsonl"))
        for x in pathlib.Path(p).read_text().splitlines()
    ]
    assert {e["reason"] for e in errors} == set(totals["errors_by_reason"])
    long = [e for e in errors if e["id"] == "long"]
    assert long[0]["reason"] == "over_long" and "max_tokens 200" in long[0]["detail"]
    stats = [json.loads(pathlib.Path(p).read_text()) for p in glob.glob(f"{out}/*.stats.json")]
    assert sum(s["records"] for s in stats) == 37 and sum(s["inputs"] for s in stats) == 41
    # A rerun skips finished shards; other flags into the same folder are refused.
    _, again = text_records.write_text_records(
        text_input,
        out,
        tokenizer="bytes",
        layout="demo",
        num_shards=3,
        max_tokens=200,
        process_index=0,
        process_count=1,
        progress=False,
    )
    assert again["skipped"] == 3 and again["written"] == 0
    with pytest.raises(ValueError, match="other parameters"):
        text_records.write_text_records(
            text_input,
            out,
            tokenizer="bytes",
            layout="demo",
            num_shards=3,
            max_tokens=300,
            process_index=0,
            process_count=1,
            progress=False,
        )


def test_processes_split_shards_and_match_one_process(text_input, tmp_path):
    kw = dict(tokenizer="bytes", layout="demo", num_shards=4, progress=False)
    text_records.write_text_records(
        text_input, str(tmp_path / "one"), **kw, process_index=0, process_count=1
    )
    for p in range(2):
        plan, totals = text_records.write_text_records(
            text_input, str(tmp_path / "two"), **kw, process_index=p, process_count=2
        )
        assert totals["written"] == 2
    assert _bytes(tmp_path / "one") == _bytes(tmp_path / "two")


def test_killed_job_resumes_to_identical_output(text_input, tmp_path):
    args = [
        sys.executable,
        "-m",
        "data_pipelines.text_records",
        f"--input={text_input}",
        "--tokenizer=bytes",
        "--layout=demo",
        "--num_shards=4",
        "--process_index=0",
        "--process_count=1",
    ]
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    subprocess.run(args + [f"--out={clean}"], cwd=REPO, check=True, capture_output=True)
    env = dict(os.environ, **{shard_job.KILL_ENV: "15"})  # dies inside the second shard
    r = subprocess.run(args + [f"--out={killed}"], cwd=REPO, env=env, capture_output=True)
    assert r.returncode == -9
    assert len(glob.glob(f"{killed}/*.array_record")) == 1
    assert glob.glob(f"{killed}/*.incomplete")  # the shard being written when killed
    subprocess.run(args + [f"--out={killed}"], cwd=REPO, check=True, capture_output=True)
    assert _bytes(clean) == _bytes(killed)
    assert not glob.glob(f"{killed}/*.incomplete")


def test_speech_asr_tts_jobs(tmp_path):
    toks = tmp_path / "tokens.jsonl"
    rows = [{"id": f"u{i}", "tokens": [i, i + 1, i + 2]} for i in range(6)]
    rows[2] = {"id": "u2", "tokens": [600]}  # outside the demo codebook (512)
    rows[4] = {"id": "u4", "tokens": list(range(300))}  # too long for max_tokens
    toks.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    man = tmp_path / "manifest.jsonl"
    texts = {"u0": "hi", "u1": "yo", "u2": "x", "u3": " ", "u4": "long"}  # u5: no transcript
    man.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in texts.items()))
    kw = dict(
        layout="demo", num_shards=2, max_tokens=64, process_index=0, process_count=1, progress=False
    )
    plan, totals = speech_records.write_speech_records(
        str(toks), str(tmp_path / "sp"), kind="speech", **kw
    )
    assert totals["records"] == 4
    assert totals["errors_by_reason"] == {"bad_tokens": 1, "over_long": 1}
    asr_plan, asr = speech_records.write_speech_records(
        str(toks), str(tmp_path / "asr"), kind="asr", transcripts=str(man), tokenizer="bytes", **kw
    )
    assert asr["records"] == 2
    assert asr["errors_by_reason"] == {
        "bad_tokens": 1,
        "over_long": 1,
        "empty_text": 1,
        "no_transcript": 1,
    }
    ex = _read(asr_plan.pattern())[0]
    assert ex.kind == "asr" and bytes(ex.tokens[ex.loss_mask == 1][:-1].tolist()) == b"hi"
    tts_plan, tts = speech_records.write_speech_records(
        str(toks), str(tmp_path / "tts"), kind="tts", transcripts=str(man), tokenizer="bytes", **kw
    )
    ex = _read(tts_plan.pattern())[0]
    target = ex.tokens[ex.loss_mask == 1]
    assert ex.kind == "tts" and LAYOUT.ids_to_codes(target[:-1]).tolist() == [0, 1, 2]
    assert target[-1] == LAYOUT.special("<|end_of_audio|>")
    with pytest.raises(ValueError, match="needs --transcripts"):
        speech_records.write_speech_records(str(toks), str(tmp_path / "x"), kind="asr", **kw)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--input=/nonexistent/*.txt", "--tokenizer=bytes"], "matches no file"),
        (["--input=x.txt", "--tokenizer=byte"], "not 'bytes' and not a tokenizer model file"),
    ],
)
def test_job_user_errors_are_one_line_without_traceback(flags, message, tmp_path):
    """python -m data_pipelines.* enters through cli/doors.run, like the glmvoice-* tools."""
    cmd = [sys.executable, "-m", "data_pipelines.text_records", f"--out={tmp_path}/o", *flags]
    r = subprocess.run(cmd + ["--layout=demo"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_every_job_enters_through_doors():
    for path in sorted(pathlib.Path(REPO, "data_pipelines").glob("*.py")):
        text = path.read_text()
        if "__main__" in text:
            assert "doors.run(main, __doc__)" in text and "app.run(" not in text, path.name
