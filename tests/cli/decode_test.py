"""glmvoice-decode on the tiny fixture decoder: outputs, parity, bad lines, streaming, exit codes.

Fixture: tests/fixtures/decoder (the reference run in deterministic mode). Tolerance 1e-3 max abs
on waveform and mel, as in tests/models/decoder/speech_decoder_test.py. Lengths are chosen so
that the whole test compiles the decoder for one token count and one streaming schedule.
"""

import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf

from glmvoice_jax.cli import decode
from glmvoice_jax.convert.decoder import decoder_checkpoint

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "decoder")
with open(os.path.join(FIXTURES, "tokens.jsonl"), encoding="utf-8") as _f:
    UTTS = {u["id"]: u for u in map(json.loads, _f)}
TOL = 1e-3


def _expected(name):
    return np.load(os.path.join(FIXTURES, "expected", name))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    dst = tmp_path_factory.mktemp("decoder") / "ckpt"
    decoder_checkpoint.import_decoder(FIXTURES, dst)
    return str(dst)


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_decode_writes_wav_and_mel_and_skips_bad_lines(ckpt, tmp_path, capsys):
    good = UTTS["vtok2_n18"]
    other = [int(t) for t in (np.asarray(good["tokens"]) * 7 + 3) % 64]  # same length: no compile
    src = _write_lines(
        tmp_path / "tokens.jsonl",
        [
            json.dumps(good),
            json.dumps({"id": "bad_id", "tokens": [1, 2, 64, 3]}),
            "",
            json.dumps({"id": "empty", "tokens": []}),
            '{"id": "cut", "tokens": [1, 2',
            json.dumps({"id": "other", "tokens": other}),
        ],
    )
    out = tmp_path / "out"
    argv = ["glmvoice-decode", "--checkpoint", ckpt, "--input", src, "--output", str(out)]
    report = decode.main(argv + ["--noise", "zeros", "--save_mel"])

    assert [r.id for r in report.results] == ["vtok2_n18", "other"]
    wav, rate = sf.read(out / "vtok2_n18.wav", dtype="float32")
    assert rate == 22050 and sf.info(out / "vtok2_n18.wav").subtype == "FLOAT"
    np.testing.assert_allclose(wav, _expected("vtok2_n18.wav.npy"), rtol=0, atol=TOL)
    mel = np.load(out / "vtok2_n18.mel.npy")
    assert mel.shape == (80, 124) and mel.dtype == np.float32
    np.testing.assert_allclose(mel, _expected("vtok2_n18.mel.npy"), rtol=0, atol=TOL)
    assert sorted(os.listdir(out)) == [
        "errors.jsonl",
        "other.mel.npy",
        "other.wav",
        "vtok2_n18.mel.npy",
        "vtok2_n18.wav",
    ]

    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(2, "bad_id"), (4, "empty"), (5, None)]
    assert (
        "line 2 (id 'bad_id'): token id 64 at position 2 is outside the codebook of size 64"
        in (errors[0]["error"])
    )
    assert '"tokens" is empty' in errors[1]["error"]
    assert errors[2]["error"].startswith("line 5: not valid JSON")
    err = capsys.readouterr().err
    assert "[1/5] vtok2_n18: 18 tokens -> 1.44 s of audio" in err
    assert "decoded 2/5 lines" in err and "3 line(s) skipped" in err

    # The console script on the release directory itself: same audio, exit status 2.
    out2 = tmp_path / "out2"
    argv2 = ["glmvoice-decode", "--checkpoint", FIXTURES, "--input", src]
    monkey_argv = argv2 + ["--output", str(out2), "--noise", "zeros", "--noprogress"]
    old_argv, sys.argv = sys.argv, monkey_argv
    try:
        with pytest.raises(SystemExit) as exit_info:
            decode.run()
    finally:
        sys.argv = old_argv
    assert exit_info.value.code == decode.EXIT_SOME_LINES_FAILED == 2
    assert np.array_equal(sf.read(out2 / "vtok2_n18.wav", dtype="float32")[0], wav)


def test_streaming_reproduces_the_reference_chunks_and_reports_latency(ckpt, tmp_path, capsys):
    utt = UTTS["vtok0_n40"]
    src = _write_lines(tmp_path / "tokens.jsonl", [json.dumps(utt)])
    out = tmp_path / "out"
    argv = ["glmvoice-decode", "--checkpoint", ckpt, "--input", src, "--output", str(out)]
    report = decode.main(argv + ["--noise", "zeros", "--streaming", "--save_mel"])

    (result,) = report.results
    assert [c.new_tokens for c in result.chunks] == [25, 15]
    assert result.first_chunk_secs is not None and 0 < result.first_chunk_secs < result.wall_secs
    wav, rate = sf.read(out / f"{utt['id']}.wav", dtype="float32")
    want = _expected(f"{utt['id']}.stream.wav.npy")
    assert rate == 22050 and wav.shape == want.shape
    np.testing.assert_allclose(wav, want, rtol=0, atol=TOL)
    mel = np.load(out / f"{utt['id']}.mel.npy")
    assert mel.shape == (80, wav.size // 256)  # the streamed mel is aligned with the audio
    assert (out / "errors.jsonl").read_text() == ""
    err = capsys.readouterr().err
    assert "2 chunks, first chunk after" in err and "first-chunk latency" in err


def test_usage_errors_exit_1(tmp_path, capsys):
    src = _write_lines(tmp_path / "t.jsonl", [json.dumps(UTTS["vtok2_n18"])])
    cases = [
        (["--checkpoint", FIXTURES, "--output", str(tmp_path)], "missing required flag --input"),
        (
            ["--checkpoint", str(tmp_path / "nope"), "--input", src, "--output", str(tmp_path)],
            "does not exist",
        ),
        (
            ["--checkpoint", FIXTURES, "--input", str(tmp_path / "no.jsonl"), "--output", "x"],
            "--input",
        ),
    ]
    for args, message in cases:
        old_argv, sys.argv = sys.argv, ["glmvoice-decode", *args]
        try:
            with pytest.raises(SystemExit) as exit_info:
                decode.run()
        finally:
            sys.argv = old_argv
        assert exit_info.value.code == 1
        assert message in capsys.readouterr().err


def test_fast_preset_is_opt_in_and_close_to_exact(ckpt, tmp_path):
    """--fast runs FAST_MODE (bf16, 5 Euler steps): same length, near the exact reference audio
    (bounds as tests/models/speech_decoder: wav rms < 0.02; measured 0.0118), not equal to it."""
    utt = UTTS["vtok2_n18"]
    src = _write_lines(tmp_path / "tokens.jsonl", [json.dumps(utt)])
    argv = ["glmvoice-decode", "--checkpoint", ckpt, "--input", src, "--noise", "zeros"]
    decode.main(argv + ["--output", str(tmp_path / "fast"), "--fast", "--noprogress"])
    wav = sf.read(tmp_path / "fast" / "vtok2_n18.wav", dtype="float32")[0]
    want = _expected("vtok2_n18.wav.npy")
    assert wav.shape == want.shape
    rms = float(np.sqrt(np.mean((wav - want) ** 2)))
    assert 0 < rms < 0.02, rms
