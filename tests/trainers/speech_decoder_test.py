"""Flow-matching decoder trainer: the real train() on the 8 fake CPU devices, on a synthetic
corpus (gliding tones whose tokens are their pitch bins): a few steps lower the held-out CFM loss;
a resumed run continues with the uninterrupted run's losses; bad tokens are refused by name.
"""

import glob
import json
import os
import re

import jax
import numpy as np
import pytest
import soundfile
from flax import nnx

from glmvoice_jax import checkpoint, config_lib, sharding
from glmvoice_jax.cli import decode
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.inference import speech_stream
from glmvoice_jax.models.speech_decoder import VARIANTS
from glmvoice_jax.models.speech_decoder.flow import Flow
from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens
from glmvoice_jax.trainers import speech_decoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "decoder_tiny.py")
SR, SAMPLES_PER_TOKEN = 22050, 1764  # 12.5 Hz tokens
VOCAB = 16


def _corpus(tmp_path, n=10):
    """N tones of 1.0-1.5 s; token k = the pitch bin of the k-th 80 ms (informative tokens)."""
    rng = np.random.default_rng(0)
    audio, tokens = [], []
    for i in range(n):
        num = int(SR * (1.0 + 0.05 * i))
        f0 = np.interp(np.arange(num), [0, num], rng.uniform(150, 600, 2))
        wav = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR)
        path = tmp_path / f"u{i}.wav"
        soundfile.write(path, wav.astype(np.float32), SR)
        ids = ((f0[::SAMPLES_PER_TOKEN] - 150) / 450 * (VOCAB - 1)).astype(int)
        audio.append({"id": f"u{i}", "audio": str(path)})
        tokens.append({"id": f"u{i}", "tokens": ids.tolist()})
    for name, rows in (("audio.jsonl", audio), ("tokens.jsonl", tokens)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "audio.jsonl", tmp_path / "tokens.jsonl"


def _config(manifest, tokens, steps):
    c = config_lib.load_config_file(f"{CONFIG}:vocab={VOCAB},steps={steps}")
    c.input.manifest, c.input.tokens = str(manifest), str(tokens)
    c.input.max_tokens, c.input.heldout_every = 20, 5
    c.log_every_steps, c.evals.every_steps, c.ckpt.every_steps = 1, 12, 6
    c.ckpt.async_save, c.metrics.console = False, False
    c.schedule.warmup_steps, c.schedule.peak_lr, c.schedule.end_lr = 0, 1e-2, 1e-2
    return c


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.e2e  # slow (make test-e2e)
def test_training_lowers_the_heldout_cfm_loss(tmp_path):
    manifest, tokens = _corpus(tmp_path)
    workdir = str(tmp_path / "run")
    last = speech_decoder.train(_config(manifest, tokens, 12), workdir)
    start = next(r for r in _metrics(workdir) if r["step"] == 0)  # the untrained model
    # Measured: held-out CFM loss 106.3 -> 64.1, mel L1 9.87 -> 7.57 after 12 steps.
    assert last["eval_loss"] < 0.8 * start["eval_loss"], (start, last)
    assert last["eval_mel_l1"] < 0.9 * start["eval_mel_l1"], (start, last)
    assert last["step"] == 12 and os.path.isdir(os.path.join(workdir, "checkpoints", "12"))


@pytest.mark.e2e  # three runs, ~5 min on 2 cores
def test_resume_continues_with_the_uninterrupted_losses(tmp_path):
    manifest, tokens = _corpus(tmp_path)
    full = str(tmp_path / "full")
    speech_decoder.train(_config(manifest, tokens, 12), full)
    losses = {r["step"]: r["loss"] for r in _metrics(full) if "loss" in r}
    # Stop at step 6 (a checkpoint), then resume to 12: the same losses as without the stop.
    part = str(tmp_path / "part")
    speech_decoder.train(_config(manifest, tokens, 6), part)
    speech_decoder.train(_config(manifest, tokens, 12), part)
    resumed = {r["step"]: r["loss"] for r in _metrics(part) if "loss" in r}
    np.testing.assert_allclose([resumed[s] for s in range(7, 13)],
                               [losses[s] for s in range(7, 13)], rtol=1e-5)  # fmt: skip


def test_tokens_of_another_tokenizer_are_refused(tmp_path):
    manifest, tokens = _corpus(tmp_path, n=3)
    rows = [json.loads(line) for line in tokens.read_text().splitlines()]
    rows[1]["tokens"][0] = 300
    tokens.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = _config(manifest, tokens, 2)
    with pytest.raises(ValueError, match="reads 16 ids"):
        speech_decoder.load_corpus(c, speech_decoder.validate(c))
    c.model.input_frame_rate = 25.0  # audio is half as long as 25 Hz tokens imply
    rows[1]["tokens"][0] = 0
    tokens.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="another frame rate"):
        speech_decoder.load_corpus(c, speech_decoder.validate(c))


def _quick(c):
    """No held-out evals (their ODE compile is the slow part): decoder-writing tests only."""
    c.evals.every_steps, c.log_every_steps = 0, 2
    return c


@pytest.mark.e2e  # 63 s quiet (make test-e2e)
def test_trained_decoder_is_loaded_by_decode_and_the_chat_stream(tmp_path):
    # Griffin-Lim vocoder: the trainer writes WORKDIR/decoder (flow + vocoder); glmvoice-decode
    # and the chat tool's SpeechStream make audio from it and from the trainer's checkpoints.
    manifest, tokens = _corpus(tmp_path, n=6)
    workdir = str(tmp_path / "run")
    speech_decoder.train(_quick(_config(manifest, tokens, 2)), workdir)
    model = decoder_checkpoint.load_any(os.path.join(workdir, "decoder"))
    assert model.config.vocoder == "griffin_lim" and model.config.flow.vocab_size == VOCAB
    trained = decoder_checkpoint.load_any(os.path.join(workdir, "checkpoints"))
    for k, v in decoder_checkpoint.flat_params(model).items():  # the same flow either way
        np.testing.assert_array_equal(v, decoder_checkpoint.flat_params(trained)[k])
    out = tmp_path / "wav"
    report = decode.main(["glmvoice-decode", "--checkpoint", os.path.join(workdir, "decoder"),
                          "--input", str(tokens), "--output", str(out), "--noise", "zeros",
                          "--noprogress"])  # fmt: skip
    assert not report.errors and len(report.results) == 6
    wav, sr = soundfile.read(out / "u0.wav")
    assert sr == SR and wav.size > 0 and np.abs(wav).max() > 1e-3
    chunks = []
    stream = speech_stream.SpeechStream(model, chunks.append)  # blocks of 10, 25, ...
    stream.push(np.arange(14) % VOCAB)
    stream.finish()
    assert len(chunks) == 2 and all(c.size > 0 and np.isfinite(c).all() for c in chunks)
    # The held-back overlap is emitted at the end: about the whole utterance's length.
    assert abs(sum(c.size for c in chunks) / (256 * frames_from_tokens(14, 12.5)) - 1) < 0.05


@pytest.mark.e2e  # 46 s quiet (make test-e2e)
def test_init_from_an_imported_release_decoder_with_its_hift(tmp_path):
    # A stand-in for glmvoice-import of glm-4-voice-decoder: a full decoder checkpoint of the tiny
    # preset (64 codes at 12.5 Hz, flow + HiFT). The config names 16 codes: refused in one line
    # naming both, unless init_new_tokenizer (fresh token table, the rest from the checkpoint).
    release = str(tmp_path / "release")
    decoder_checkpoint.write_untrained(VARIANTS["tiny"], release, seed=3)
    manifest, tokens = _corpus(tmp_path, n=6)
    c = _quick(_config(manifest, tokens, 2))
    c.init_from, c.vocoder = release, "hift"
    cfg = speech_decoder.validate(c)
    fresh = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(Flow(cfg, rngs=nnx.Rngs(0)))))
    with pytest.raises(ValueError, match=r"64 tokens at 12.5 Hz but the config names 16 tokens"):
        speech_decoder.init_flow(release, cfg, False, fresh)
    c.init_new_tokenizer = True
    init = speech_decoder.init_flow(release, cfg, True, fresh)
    _, src = decoder_checkpoint.flow_params(release)
    leaves = jax.tree_util.tree_leaves_with_path(init)
    flat = {"/".join(str(getattr(k, "key", k)) for k in p): v for p, v in leaves}
    for name, value in flat.items():
        if name == speech_decoder.EMBEDDING:  # (16, D): fresh, not the checkpoint's (64, D)
            assert value.shape[0] == VOCAB and src[name].shape[0] == 64
        else:
            np.testing.assert_array_equal(value, src[name])
    workdir = str(tmp_path / "run")
    speech_decoder.train(c, workdir)
    model = decoder_checkpoint.load_any(os.path.join(workdir, "decoder"))
    release_model = decoder_checkpoint.load_any(release)
    assert model.config.vocoder == "hift" and model.config.flow.vocab_size == VOCAB
    release_hift = decoder_checkpoint.flat_params(release_model.hift)
    for k, v in decoder_checkpoint.flat_params(model.hift).items():  # HiFT reused unchanged
        np.testing.assert_array_equal(v, release_hift[k])
    # (Decoding with a HiFT decoder: tests/cli/decode_test.py; not repeated here for time.)


def test_new_voice_rows_are_cut_to_whole_blocks_of_08_seconds():
    # configs/decoder_new_voice.py: b = 0.8 s = 10 tokens at 12.5 Hz; a row keeps its first n·b
    # seconds (tokens and the matching mel frames), drawn from (seed, step).
    c = config_lib.load_config_file(os.path.join(REPO, "configs", "decoder_new_voice.py:vocab=16"))
    cfg = speech_decoder.validate(c)
    n_tok = 37
    mel = np.zeros((frames_from_tokens(n_tok, 12.5), 80), np.float32)
    utts = [speech_decoder.Utterance("a", np.arange(n_tok, dtype=np.int32), mel),
            speech_decoder.Utterance("b", np.arange(6, dtype=np.int32), mel[:41])]  # fmt: skip
    block = round(c.input.truncate_seconds * cfg.input_frame_rate)
    assert block == 10
    cuts = set()
    for step in range(30):
        rows = speech_decoder.truncated(utts, np.array([0, 1]), cfg, block, [0, step, 1])
        a, b = rows
        assert a.tokens.size in (10, 20, 30) and a.mel.shape[0] == frames_from_tokens(
            a.tokens.size, 12.5)  # fmt: skip
        assert b.tokens.size == 6  # shorter than one block: whole
        cuts.add(a.tokens.size)
    assert cuts == {10, 20, 30}
    again = speech_decoder.truncated(utts, np.array([0]), cfg, block, [0, 7, 1])
    assert again[0].tokens.size == speech_decoder.truncated(utts, [0], cfg, block, [0, 7, 1])[
        0].tokens.size  # fmt: skip
    assert speech_decoder.truncated(utts, [0], cfg, 0, [0, 0, 1])[0].tokens.size == n_tok


@pytest.mark.e2e  # ~40 s of CPU (153 s wall under load 11)
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, capsys):
    # Steps 2 and 4 saved as the trainer saves them (flow params, Adam state, the decoder meta);
    # step 4's parameter bytes overwritten in place, which only a read finds. train() falls back
    # to step 2 (total_steps 2: nothing left to train), names step 4 and sets it aside.
    manifest, tokens = _corpus(tmp_path, n=6)
    c = _quick(_config(manifest, tokens, 2))
    cfg = speech_decoder.validate(c)
    mesh = sharding.make_mesh(c.mesh)
    layout = speech_decoder.step_layout(c, cfg, mesh)
    decoder_cfg, _ = speech_decoder.decoder_config(c, cfg)
    extra = {"trainer": speech_decoder.TRAINER, "params": "flow", "vocoder_from": ""}
    meta = checkpoint.model_meta(decoder_cfg, None, extra=extra)
    root = tmp_path / "run" / "checkpoints"
    ckpt = checkpoint.Checkpointer(str(root), keep=5, async_save=False)
    with sharding.activate(mesh, c.axis_rules):
        params = jax.jit(
            lambda: nnx.to_pure_dict(nnx.state(layout.make_model())),
            out_shardings=layout.param_sh,
        )()
        train_state = jax.jit(layout.init_train, out_shardings=layout.train_sh)(params)
        for step in (2, 4):
            shifted = jax.tree.map(lambda x, s=step: x + s, params)
            ckpt.save(step, params=shifted, train=train_state, data_iter=None, meta=meta)
    ckpt.close()
    for f in glob.glob(str(root / "4" / "params" / "d" / "*")):
        with open(f, "r+b") as fh:
            fh.write(b"\xff" * os.path.getsize(f))
    speech_decoder.train(c, str(tmp_path / "run"))
    printed = capsys.readouterr().out
    assert "resumed from step 2" in printed and re.search(r"step 4.*could not be read", printed)
    assert os.path.isdir(root / "4.damaged") and not os.path.exists(root / "4")
    model = decoder_checkpoint.load_any(str(tmp_path / "run" / "decoder"))
    want = jax.device_get(params[speech_decoder.EMBEDDING.split("/")[0]]["embedding"]) + 2
    got = decoder_checkpoint.flat_params(model)["flow/" + speech_decoder.EMBEDDING]
    np.testing.assert_array_equal(got, want)


@pytest.mark.e2e  # ~35 s of CPU: tracing the 111 M-parameter init (flax reads .sharding of tracers)
def test_dry_run_of_the_release_dims_config(capsys):
    # configs/decoder_release.py: the glm4_voice_decoder flow (decoder.md §1), shapes only, on
    # the 8 fake devices (fsdp 8); its v5p-8 compile: docs/decoder_training.md.
    c = config_lib.load_config_file(os.path.join(REPO, "configs", "decoder_release.py"))
    assert c.vocoder == "hift" and c.init_from and not c.init_new_tokenizer
    out = speech_decoder.dry_run(c)
    assert out["parameters"] == 111_166_208 and out["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # fp32 params + Adam mu and nu (3 x 424 MiB), sharded 8 ways: ~160 MiB per device.
    assert 150 * 2**20 < out["total_bytes_per_device"] < 170 * 2**20
    assert "1722 frames" in capsys.readouterr().out
    other = config_lib.load_config_file(
        os.path.join(REPO, "configs", "decoder_release.py:vocab=4096,rate=25")
    )
    assert other.init_new_tokenizer and other.model.input_frame_rate == 25.0
