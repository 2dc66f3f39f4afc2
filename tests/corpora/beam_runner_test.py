import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest
from etils import epath

from glmvoice_jax.corpora import (
    beam_runner,
    dialogue_records,
    shard_job,
    speech_records,
    text_records,
)
from glmvoice_jax.workflows import demo_sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Two threads on the DirectRunner: shards are written concurrently, in no fixed order.
DIRECT = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_threading"


def _bytes(out_dir):
    """Every file of a job's output folder (job.json included) -> its bytes."""
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(out_dir).iterdir())}


@pytest.fixture(scope="module")
def demo_text(tmp_path_factory):
    """The demo's text documents (bundled sentences), plus inputs every job must skip and list."""
    rows = [
        json.dumps({"id": f"text{i}", "text": t})
        for i, t in enumerate(demo_sources.bundled_text_docs(48))
    ]
    rows[5] = json.dumps({"id": "blank", "text": "  "})
    rows[20] = "{broken json"
    rows[33] = json.dumps({"id": "long", "text": "x" * 1000})  # over --max_tokens
    path = tmp_path_factory.mktemp("demo") / "text.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def demo_speech(tmp_path_factory):
    """Stand-in speech tokens of the demo's transcripts (demo_sources.text_derived_tokens)."""
    d = tmp_path_factory.mktemp("speech")
    manifest = d / "manifest.jsonl"
    docs = demo_sources.bundled_text_docs(24, seed=3)
    rows = [{"id": f"u{i}", "text": t[:80]} for i, t in enumerate(docs)]
    rows[7]["text"] = " "
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tokens = demo_sources.text_derived_tokens(str(manifest), str(d / "tokens.jsonl"))
    return tokens, str(manifest)


def _text_job(demo_text, out, **kw):
    return functools.partial(
        text_records.write_text_records,
        demo_text,
        str(out),
        tokenizer="bytes",
        layout="demo",
        num_shards=5,
        max_tokens=900,
        progress=False,
        **kw,
    )


def test_beam_writes_the_shards_of_the_process_runner(demo_text, demo_speech, tmp_path):
    for p in range(2):  # the process-sharded runner, two processes
        _text_job(demo_text, tmp_path / "proc", process_index=p, process_count=2)()
    plan, totals = beam_runner.run_job(_text_job(demo_text, tmp_path / "beam"), DIRECT)
    assert _bytes(tmp_path / "proc") == _bytes(tmp_path / "beam")
    assert totals["written"] == 5 and totals["skipped"] == 0
    assert totals["errors_by_reason"] == {"empty_text": 1, "bad_json": 1, "over_long": 1}
    assert not (tmp_path / "beam" / beam_runner.STAGING_DIR).exists()

    tokens, manifest = demo_speech
    kw = dict(kind="asr", transcripts=manifest, tokenizer="bytes", layout="demo", num_shards=3)
    _, proc = speech_records.write_speech_records(
        tokens, str(tmp_path / "asr_proc"), **kw, process_index=0, process_count=1, progress=False
    )
    job = functools.partial(
        speech_records.write_speech_records, tokens, str(tmp_path / "asr_beam"), **kw
    )
    _, beam = beam_runner.run_job(job, DIRECT)
    assert _bytes(tmp_path / "asr_proc") == _bytes(tmp_path / "asr_beam")
    assert beam == proc and beam["errors_by_reason"] == {"empty_text": 1}


def test_beam_job_with_two_plans_matches_the_process_runner(tmp_path):
    """dialogue_records writes two shard sets: the n-th run call is the n-th pipeline."""
    turns = [{"role": "user", "audio": "q"}, {"role": "assistant", "text": "Yes.", "audio": "a"}]
    lines = [json.dumps({"id": f"d{i}", "turns": turns}) for i in range(7)]
    lines[3] = json.dumps({"id": "solo", "turns": turns[:1]})
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    toks = [{"id": "q", "tokens": [1, 2, 3]}, {"id": "a", "tokens": list(range(30))}]
    (tmp_path / "tok.jsonl").write_text("\n".join(json.dumps(t) for t in toks) + "\n")
    job = functools.partial(
        dialogue_records.write_dialogue_records,
        str(tmp_path / "d.jsonl"),
        tokenizer="bytes",
        layout="demo_chat",
        speech_tokens=str(tmp_path / "tok.jsonl"),
        num_shards=3,
        progress=False,
    )
    proc = job(str(tmp_path / "proc"), process_index=0, process_count=1)
    beam = beam_runner.run_job(functools.partial(job, str(tmp_path / "beam")), DIRECT)
    assert {k: v[1] for k, v in beam.items()} == {k: v[1] for k, v in proc.items()}
    for copy in dialogue_records.COPIES:
        assert _bytes(tmp_path / "proc" / copy) == _bytes(tmp_path / "beam" / copy)
    assert beam["text_output"][1]["errors_by_reason"] == {"no_assistant_turn": 1}


def test_beam_rerun_rebuilds_only_missing_shards(demo_text, tmp_path):
    out = tmp_path / "text"
    beam_runner.run_job(_text_job(demo_text, out), DIRECT)
    before = _bytes(out)
    kept = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    lost = "text-00002-of-00005.array_record"
    (out / lost).unlink()
    # What a killed attempt leaves behind: a staging folder with a partial shard.
    stale = out / beam_runner.STAGING_DIR / "dead"
    stale.mkdir(parents=True)
    (stale / lost).write_bytes(b"partial")
    _, totals = beam_runner.run_job(_text_job(demo_text, out), DIRECT)
    assert totals["written"] == 1 and totals["skipped"] == 4
    assert _bytes(out) == before
    rebuilt = {lost, lost + ".errors.jsonl", lost + ".stats.json"}
    assert {n for n, t in kept.items() if (out / n).stat().st_mtime_ns != t} == rebuilt
    _, again = beam_runner.run_job(_text_job(demo_text, out), DIRECT)  # nothing left to do
    assert again["written"] == 0 and again["skipped"] == 5
    with pytest.raises(ValueError, match="other parameters"):
        beam_runner.run_job(_text_job(demo_text, out, split="test"), DIRECT)


def test_command_line_runner_beam(demo_text, tmp_path):
    _text_job(demo_text, tmp_path / "proc", process_index=0, process_count=1)()
    args = [
        sys.executable,
        "-m",
        "data_pipelines.text_records",
        f"--input={demo_text}",
        f"--out={tmp_path / 'beam'}",
        "--tokenizer=bytes",
        "--layout=demo",
        "--num_shards=5",
        "--max_tokens=900",
        "--runner=beam",
        f"--beam_options={DIRECT}",
    ]
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote 5 shard(s)" in r.stdout and "'empty_text': 1" in r.stdout
    assert "apitools" not in r.stderr  # Beam's import-time BigQuery notice is filtered
    assert _bytes(tmp_path / "proc") == _bytes(tmp_path / "beam")


def test_worker_that_sees_other_inputs_refuses_to_write(demo_text, tmp_path):
    job = _text_job(demo_text, tmp_path / "text")
    plan, _ = job(runner=beam_runner._Capture(0))  # the plan a worker would rebuild
    driver_plan = shard_job.JobPlan(
        plan.out_dir, plan.name, plan.num_inputs + 1, plan.num_shards
    )  # the driver saw one more input line
    with pytest.raises(RuntimeError, match="another job than the driver"):
        beam_runner._WriteShard(job, 0, driver_plan).setup()
    with pytest.raises(RuntimeError, match="made 1 shard_job.run call"):
        beam_runner._WriteShard(job, 1, plan).setup()


def _remote_bytes(uri):
    """Every file of a remote output folder -> its bytes (as ``_bytes`` for a local one)."""
    return {p.name: p.read_bytes() for p in sorted(epath.Path(uri).iterdir()) if p.is_file()}


@pytest.fixture
def local_staging(tmp_path, monkeypatch):
    """Where remote shards are staged ($GLMVOICE_STAGING); must be empty after each job."""
    staging = tmp_path / "staging"
    monkeypatch.setenv("GLMVOICE_STAGING", str(staging))
    return staging


def _empty(folder):
    return not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))


def test_bucket_output_matches_local_output(demo_text, fake_gcs, local_staging, tmp_path):
    """gs:// output: beam and process runners write the local process runner's bytes."""
    _text_job(demo_text, tmp_path / "proc", process_index=0, process_count=1)()
    local = _bytes(tmp_path / "proc")
    _, totals = beam_runner.run_job(_text_job(demo_text, "gs://bucket/beam"), DIRECT)
    assert _remote_bytes("gs://bucket/beam") == local
    assert totals["written"] == 5
    assert totals["errors_by_reason"] == {"empty_text": 1, "bad_json": 1, "over_long": 1}
    for p in range(2):
        _text_job(demo_text, "gs://bucket/proc", process_index=p, process_count=2)()
    assert _remote_bytes("gs://bucket/proc") == local
    assert _empty(local_staging)
    with pytest.raises(ValueError, match="other parameters"):
        _text_job(demo_text, "gs://bucket/proc", split="test", process_count=1)()


def test_bucket_rerun_rewrites_only_the_missing_shard(demo_text, fake_gcs, local_staging):
    out = "gs://bucket/text"
    beam_runner.run_job(_text_job(demo_text, out), DIRECT)
    before = _remote_bytes(out)
    objects = dict(fake_gcs)  # path -> stored object; a rewrite stores a new one
    lost = "text-00002-of-00005.array_record"
    (epath.Path(out) / lost).unlink()
    _, totals = beam_runner.run_job(_text_job(demo_text, out), DIRECT)
    assert totals["written"] == 1 and totals["skipped"] == 4
    assert _remote_bytes(out) == before
    rewritten = {k.rsplit("/", 1)[-1] for k, v in fake_gcs.items() if objects.get(k) is not v}
    assert rewritten == {lost, lost + ".errors.jsonl", lost + ".stats.json"}
    (epath.Path(out) / lost).unlink()  # the process runner resumes the same way
    _, totals = _text_job(demo_text, out, process_index=0, process_count=1)()
    assert totals["written"] == 1 and totals["skipped"] == 4
    assert _remote_bytes(out) == before
    assert _empty(local_staging)
