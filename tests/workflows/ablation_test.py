"""glmvoice-ablate: a 2-cell, few-step sweep (plus an invalid cell), killed and resumed."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from glmvoice_jax import config_lib
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.models.speech_decoder import VARIANTS
from glmvoice_jax.workflows import ablation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(os.path.dirname(__file__))))

SWEEP = f'''
from glmvoice_jax import config_lib

def get_config(arg=None):
    c = config_lib.load_config_file("{REPO}/configs/ablation_bitrates.py:tiny")
    for name in ("25hz", "6p25hz"):
        del c.cells[name]
    c.cells.bad = dict(tokenizer="configs/tokenizer_12hz.py:tiny",
                       overrides=("model.pooling_position=99",), checkpoint="", decoder="")
    c.tokenizer.steps = 3
    c.lm.steps = 2
    c.lm.overrides = ("input.global_batch_size=8", "ckpt.async_save=False")
    c.corpus.espeak_max_sentences = 30
    c.evals.heldout_utterances = 2
    c.evals.story_cloze_max_items = 2
    c.evals.reconstruction_utterances = 1
    for name, decoder in DECODERS.items():
        c.cells[name].decoder = decoder
    return c
'''


def untrained_decoder(path, vocab: int, rate: float) -> str:
    """A random-weight Griffin-Lim decoder for ``vocab`` tokens at ``rate`` Hz (numpy, fast)."""
    tiny = VARIANTS["tiny"]
    flow = dataclasses.replace(tiny.flow, vocab_size=vocab, input_frame_rate=rate)
    config = dataclasses.replace(tiny, flow=flow, vocoder="griffin_lim")
    decoder_checkpoint.write_untrained(config, str(path))
    return str(path)


def _run(cfg: str, workdir: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "glmvoice_jax.cli.ablate",
        f"--config={cfg}",
        f"--workdir={workdir}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.e2e  # 120 s quiet: make test stays inside its budget (make test-e2e)
def test_sweep_is_killed_and_resumed_stage_by_stage(tmp_path):
    # Untrained decoders of each cell's vocabulary and rate: the named-decoder path, no training
    # (the decoder training path: test_sweep_trains_a_decoder_per_cell_and_resumes, e2e).
    decoders = {
        name: untrained_decoder(tmp_path / f"decoder_{name}", 256, rate)
        for name, rate in (("12p5hz", 12.5), ("50hz", 50.0))
    }
    cfg = tmp_path / "sweep.py"
    cfg.write_text(f"DECODERS = {decoders!r}\n" + SWEEP)
    wd = tmp_path / "sweep"
    first = _run(str(cfg), str(wd), "--config.debug.kill_after=50hz/tokenize")
    assert first.returncode == -9, first.stderr[-3000:]
    stages = wd / "cells" / "50hz" / "stages"
    assert sorted(os.listdir(stages)) == ["tokenize.json", "tokenizer.json"]
    done_before = {
        p: os.path.getmtime(p)
        for p in [*stages.iterdir(), *(wd / "cells" / "12p5hz" / "stages").iterdir()]
    }
    assert len(done_before) == 2 + len(ablation.STAGES)

    second = _run(str(cfg), str(wd))
    assert second.returncode == 0, second.stderr[-3000:]
    for p, mtime in done_before.items():  # finished stages are not redone
        assert os.path.getmtime(p) == mtime, p
    report = json.loads((wd / "report.json").read_text())
    cells = {c["cell"]: c for c in report["cells"]}
    assert cells["bad"]["status"] == "invalid"
    assert "pooling_position" in cells["bad"]["error"]
    for name, rate in (("12p5hz", 12.5), ("50hz", 50.0)):
        cell = cells[name]
        assert cell["status"] == "ok", cell.get("error")
        tok = cell["stages"]["tokenizer"]
        assert tok["frame_rate_hz"] == rate and tok["codebook_size"] == 256
        assert tok["bitrate_bps"] == rate * 8
        # Tokens per second of audio, measured on the held-out set, match the frame rate.
        assert abs(cell["stages"]["tokenize"]["tokens_per_second"] - rate) < 0.06 * rate
        ev = cell["stages"]["lm_eval"]
        for key in ("speech_nats_per_second", "asr_cer", "tts_cer", "story_cloze_s2s"):
            assert ev[key] is not None and ev[key] >= 0
        assert cell["stages"]["decoder"] == {
            "checkpoint": decoders[name],
            "trained": False,
            "seconds": cell["stages"]["decoder"]["seconds"],
        }
        recon = cell["stages"]["reconstruction"]
        assert recon["utterances"] + recon["decode_errors"] == 1
        assert recon["judge"] == cells["12p5hz"]["stages"]["tokenizer"]["checkpoint"]
        assert recon["recon_cer"] >= 0 and recon["judge_original_cer"] >= 0
    md = (wd / "report.md").read_text()
    assert "| 12p5hz | 12.5 | 256 | 100 |" in md and "invalid" in md
    assert "## Table 1 side by side" in md and "| 8.43% | 2.52 | 3.39 |" in md
    assert (wd / "report.png").stat().st_size > 10_000
    assert (wd / "tensorboard" / "50hz").is_dir()


def test_overrides_and_bad_cells_are_reported(tmp_path):
    c = config_lib.load_config_file(os.path.join(REPO, "configs/ablation_bitrates.py:tiny"))
    assert sorted(c.cells) == ["12p5hz", "25hz", "50hz", "6p25hz"]
    tok = config_lib.load_config_file(ablation.resolve(c.cells["6p25hz"].tokenizer))
    ablation.apply_overrides(tok, ["model.codebook_size=512", "text.normalize=False"], "t")
    assert tok.model.codebook_size == 512 and tok.text.normalize is False
    with pytest.raises(ablation.CellInvalid, match="codebok_size"):
        ablation.apply_overrides(tok, ["model.codebok_size=512"], "cell x")
    with pytest.raises(ablation.CellInvalid, match="key=value"):
        ablation.apply_overrides(tok, ["model.codebook_size"], "cell x")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        ablation.resolve("configs/nope.py:tiny")
    c.corpus.train_manifest = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        ablation.Sweep(c, str(tmp_path)).corpus()
    with pytest.raises(ValueError, match="local or mounted"):
        ablation.Sweep(c, "gs://bucket/ablate")
    c.corpus.train_manifest = ""
    c.corpus.espeak_sentences = "poems"
    with pytest.raises(ValueError, match="'poems' is not a bundled sentence set"):
        ablation.Sweep(c, str(tmp_path)).corpus()
    arg = "tiny,cells=50hz+6p25hz,sentences=grammar_6k"
    sub = config_lib.load_config_file(os.path.join(REPO, f"configs/ablation_bitrates.py:{arg}"))
    assert sorted(sub.cells) == ["50hz", "6p25hz"] and sub.corpus.espeak_sentences == "grammar_6k"
    with pytest.raises(ValueError, match="unknown cells"):
        config_lib.load_config_file(os.path.join(REPO, "configs/ablation_bitrates.py:cells=7hz"))


@pytest.mark.e2e
def test_sweep_trains_a_decoder_per_cell_and_resumes(tmp_path):
    """One cell, a 3-step flow on its tokens, killed after the decoder: resumed, not retrained."""
    cfg = tmp_path / "sweep.py"
    cfg.write_text(
        "DECODERS = {}\n" + SWEEP.replace('"25hz", "6p25hz"', '"25hz", "6p25hz", "50hz"')
    )
    wd = tmp_path / "sweep"
    first = _run(
        str(cfg), str(wd), "--config.debug.kill_after=12p5hz/decoder", "--config.decoder.steps=3"
    )
    assert first.returncode == -9, first.stderr[-3000:]
    cell = wd / "cells" / "12p5hz"
    decoder_files = {p: os.path.getmtime(p) for p in (cell / "decoder").rglob("*") if p.is_file()}
    second = _run(str(cfg), str(wd), "--config.decoder.steps=3")
    assert second.returncode == 0, second.stderr[-3000:]
    for p, mtime in decoder_files.items():  # the finished decoder is not retrained
        assert os.path.getmtime(p) == mtime, p
    report = json.loads((wd / "report.json").read_text())
    stages = {c["cell"]: c for c in report["cells"]}["12p5hz"]["stages"]
    assert stages["decoder"]["trained"] and stages["decoder"]["step"] == 3
    assert stages["decoder"]["checkpoint"] == str(cell / "decoder" / "decoder")
    recon = stages["reconstruction"]
    assert recon["utterances"] == 1 and recon["decoder"] == stages["decoder"]["checkpoint"]
    for key in ("recon_cer", "judge_original_cer", "stoi", "mcd_db", "retokenized_agreement"):
        assert recon[key] is not None


def test_a_stage_whose_trainer_stopped_early_is_not_marked_done(tmp_path, monkeypatch):
    """SIGTERM inside a stage: the trainer saves and returns; the sweep must not mark it done."""
    with pytest.raises(ablation.StageStopped, match="step 0 of 5.*run the same command"):
        ablation.check_complete(str(tmp_path / "none"), 5, "cell x: the LM")
    monkeypatch.setattr(ablation.checkpoint, "resolve", lambda path: (path, 3))
    with pytest.raises(ablation.StageStopped, match="stopped at step 3 of 5"):
        ablation.check_complete(str(tmp_path), 5, "cell x: the LM")
    ablation.check_complete(str(tmp_path), 3, "cell x: the LM")  # complete: no error
