"""Faults suite, checkpoints (issue 17): a damaged latest step falls back, a mismatch is one line.

Each case saves two steps of a tiny tree with the trainers' Checkpointer, damages the newest as
an interrupted copy or a lost file would, and restores as a resume does: it must come back at
the earlier step with one line naming the damaged step and why (the damaged step is kept, set
aside), or end in one clear UserError when no step is usable. The trainers' whole resume path is
in the e2e case at the bottom.
"""

import glob
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glmvoice_jax import checkpoint, errors

META = {"model_class": "GLMConfig", "model": {"embed_dim": 8, "num_layers": 1}}


def _trees(dim=8):
    # embed and mu are over OCDBT's 1 KiB inline limit: stored in data files, as real weights are
    params = {"embed": jnp.arange(64 * dim, dtype=jnp.float32).reshape(64, dim), "layers": {}}
    params["layers"] = {0: {"kernel": jnp.ones((dim, dim))}}
    train = {"step": jnp.int32(0), "mu": -params["embed"]}
    return params, train


def _abstract(tree):
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return checkpoint.abstract_like(tree, jax.tree.map(lambda _: sh, tree))


def _save(root, steps=(2, 4), meta=META, dim=8):
    ck = checkpoint.Checkpointer(str(root), keep=5, async_save=False)
    params, train = _trees(dim)
    for s in steps:
        params = jax.tree.map(lambda x, s=s: x + s, params)
        ck.save(s, params=params, train=train, data_iter=None, meta=meta)
    ck.close()
    for s in steps:  # the trainers' data item (their own per-process JSON)
        (root / str(s) / "data").mkdir(exist_ok=True)
        (root / str(s) / "data" / "process_0.json").write_text(f'{{"step": {s}}}')


def _restore(root, meta=META, dim=8):
    ck = checkpoint.Checkpointer(str(root), keep=5, async_save=False)
    params, train = _trees(dim)
    try:
        return ck.restore_latest(
            abstract_params=_abstract(params),
            abstract_train=_abstract(train),
            data_iter=None,
            meta=meta,
            read_extra=lambda d: (d / "data" / "process_0.json").read_text(),
        )
    finally:
        ck.close()


def _empty(step):
    shutil.rmtree(step)
    os.mkdir(step)


def _no_marker(step):
    os.remove(os.path.join(step, checkpoint.COMMIT_MARKER))


def _no_params(step):
    shutil.rmtree(os.path.join(step, "params"))


def _truncate(pattern):
    def damage(step):
        files = glob.glob(os.path.join(step, pattern))
        assert files, pattern
        for f in files:
            with open(f, "r+b") as fh:
                fh.truncate(7)

    return damage


def _remove(pattern):
    def damage(step):
        files = glob.glob(os.path.join(step, pattern))
        assert files, pattern
        for f in files:
            os.remove(f)

    return damage


def _overwrite(pattern):
    """Bytes corrupted in place (same length): only a read finds it."""

    def damage(step):
        files = glob.glob(os.path.join(step, pattern))
        assert files, pattern
        for f in files:
            n = os.path.getsize(f)
            with open(f, "wb") as fh:
                fh.write(b"\xff" * n)

    return damage


DAMAGE = {
    # name: (damage(step_dir), regex of the reason in the printed line)
    "empty step dir": (_empty, r"empty directory"),
    "no commit marker": (_no_marker, r"no commit marker \(commit_success\.txt\)"),
    "params missing": (_no_params, r"its params/ item is missing"),
    "params metadata truncated": (_truncate("params/_METADATA"), r"params/_METADATA is not valid"),
    "params node file truncated": (
        _truncate("params/d/*"),
        r"params/d/[0-9a-f]+ is truncated \(7 of at least [0-9,]+ bytes\)",
    ),
    "params value file truncated": (
        _truncate("params/ocdbt.process_0/d/*"),
        r"params/ocdbt\.process_0/d/[0-9a-f]+ is truncated \(7 of at least [0-9,]+ bytes\)",
    ),
    "params value file missing": (_remove("params/ocdbt.process_0/d/*"), r"params/ocdbt.* is miss"),
    "params manifest truncated": (
        _truncate("params/manifest.ocdbt"),
        r"params/manifest\.ocdbt could not be read \(ValueError: .*Encoded length \(7\)",
    ),
    "train value file truncated": (_truncate("train/ocdbt.process_0/d/*"), r"train/ocdbt.* is tr"),
    "params values overwritten": (
        _overwrite("params/ocdbt.process_0/d/*"),
        r'could not be read: ValueError: Error reading "embed/0\.0" in OCDBT database at local '
        r'file ".*/4/params/": Unknown frame descriptor',
    ),
}


# A failed Orbax read leaves in-flight reads whose callbacks may fire after the test, when
# pytest's own unraisable hook has replaced checkpoint._quiet_late_callbacks' (a warning only).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, capsys, name):
    damage, reason = DAMAGE[name]
    root = tmp_path / "ckpt"
    _save(root)
    damage(str(root / "4"))
    step, params, _, meta, extra = _restore(root)
    assert step == 2 and extra == '{"step": 2}' and meta == META
    np.testing.assert_array_equal(params["embed"], _trees()[0]["embed"] + 2)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "damaged" in ln]
    assert len(lines) == 1, lines
    assert re.search(rf"checkpoint step 4 in .* is damaged \({reason}", lines[0]), lines[0]
    assert "kept as 4.damaged, resuming from step 2" in lines[0]
    assert (root / "4.damaged").is_dir() and not (root / "4").exists()  # kept, never deleted
    # The run can save step 4 again; the next resume takes it and leaves the damaged copy alone.
    ck = checkpoint.Checkpointer(str(root), keep=5, async_save=False)
    p, t = _trees()
    ck.save(4, params=p, train=t, data_iter=None, meta=META)
    ck.close()
    (root / "4" / "data").mkdir()
    (root / "4" / "data" / "process_0.json").write_text('{"step": 4}')
    assert _restore(root)[0] == 4 and (root / "4.damaged").is_dir()


def test_a_step_that_fails_to_restore_falls_back_too(tmp_path, capsys, monkeypatch):
    """Damage only a read finds (e.g. corrupt bytes of the right length): the restore's error."""
    root = tmp_path / "ckpt"
    _save(root)
    restore = checkpoint.Checkpointer.restore

    def failing(self, step, **kw):
        if step == 4:
            raise ValueError(
                'DATA_LOSS: Error opening "zarr" driver: Error reading "w/0.0": Error decoding '
                "zstd [tensorstore_spec='{...}']"
            )
        return restore(self, step, **kw)

    monkeypatch.setattr(checkpoint.Checkpointer, "restore", failing)
    assert _restore(root)[0] == 2
    line = [ln for ln in capsys.readouterr().out.splitlines() if "damaged" in ln][0]
    assert re.search(
        r"step 4 in .* is damaged \(could not be read: ValueError: Error reading \"w/0\.0\": "
        r"Error decoding zstd\): kept as 4\.damaged, resuming from step 2",
        line,
    ), line


def test_a_transient_storage_error_is_not_taken_for_damage(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    _save(root)

    def unavailable(self, step, **kw):
        raise ValueError("UNAVAILABLE: Error reading from gs://bucket/4/params: connection reset")

    monkeypatch.setattr(checkpoint.Checkpointer, "restore", unavailable)
    with pytest.raises(ValueError, match="UNAVAILABLE"):
        _restore(root)
    assert (root / "4").is_dir() and not (root / "4.damaged").exists()


def test_no_intact_step_is_one_clear_error(tmp_path):
    root = tmp_path / "ckpt"
    _save(root)
    _empty(str(root / "4"))
    _no_params(str(root / "2"))
    with pytest.raises(errors.UserError) as err:
        _restore(root)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    assert "no intact checkpoint to resume from" in msg
    assert "step 4: empty directory" in msg and "step 2: its params/ item is missing" in msg
    assert (root / "4").is_dir() and (root / "2").is_dir()  # nothing renamed or deleted


def test_fresh_directory_restores_nothing(tmp_path):
    assert _restore(tmp_path / "ckpt") is None


def test_resume_with_another_model_shape_names_both(tmp_path):
    root = tmp_path / "ckpt"
    _save(
        root, meta={"model_class": "GLMConfig", "model": {"embed_dim": 16, "num_layers": 1}}, dim=16
    )
    with pytest.raises(errors.UserError) as err:
        _restore(root)  # the config: embed_dim 8
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    assert "checkpoint step 4 in" in msg and "another model shape than the config" in msg
    assert "embed_dim 16 vs 8" in msg and "embed (64, 16) vs (64, 8)" in msg
    assert (root / "4").is_dir()  # a mismatch is not damage: nothing set aside


def test_resume_of_another_model_class_names_both(tmp_path):
    root = tmp_path / "ckpt"
    _save(root, meta={"model_class": "DecoderConfig", "model": {}})
    with pytest.raises(
        errors.UserError,
        match=r"holds a DecoderConfig \(the speech decoder\) "
        r"but the config builds a GLMConfig \(the language model\)",
    ):
        _restore(root)


def test_init_from_a_decoder_checkpoint_names_both_classes():
    meta = {"model_class": "DecoderConfig", "model": {}}
    from glmvoice_jax.models import glm

    with pytest.raises(errors.UserError) as err:
        checkpoint.model_config_from_meta(
            meta, expect=glm.GLMConfig, what="init_from checkpoint /x"
        )
    msg = str(err.value)
    assert msg == (
        "init_from checkpoint /x holds a DecoderConfig model (the speech decoder), not a GLMConfig "
        "(the language model): point it at a checkpoint of a GLMConfig"
    )


def test_tools_resolve_the_newest_intact_step(tmp_path, capsys):
    root = tmp_path / "ckpt"
    _save(root)
    _no_marker(str(root / "4"))
    assert checkpoint.resolve(str(root)) == (checkpoint._absolute(str(root)), 2)
    assert "checkpoint step 4 in" in capsys.readouterr().err
    with pytest.raises(errors.UserError, match=r"checkpoint .*4 is damaged: no commit marker"):
        checkpoint.resolve(str(root / "4"))


def test_a_step_written_without_markers_is_taken_by_its_commit_time(tmp_path):
    """Older Orbax versions and older imports wrote no marker files, only the commit time."""
    root = tmp_path / "ckpt"
    _save(root)
    for f in glob.glob(str(root / "4" / "**" / checkpoint.COMMIT_MARKER), recursive=True):
        os.remove(f)
    assert checkpoint.step_problem(root / "4") is None
    assert _restore(root)[0] == 4


def test_init_from_variant_of_a_decoder_checkpoint_names_both_classes():
    from glmvoice_jax import config_lib

    config = config_lib.load_config_file(_DEMO)
    config.model.variant, config.init_from = "init_from", "/ckpt/decoder"
    with pytest.raises(errors.UserError, match=r"^init_from checkpoint /ckpt/decoder holds a Dec"):
        config_lib.model_config(config, meta={"model_class": "DecoderConfig", "model": {}})


# End to end: the LM trainer's own resume (8 fake CPU devices, a tiny model; ~20 s each).

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DEMO = os.path.join(_REPO, "configs", "demo_tiny.py") + ":corpus=synthetic"
_TINY = {
    "model.embed_dim": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "model.head_dim": 16,
    "model.mlp_dim": 64,
    "input.seq_len": 64,
    "input.global_batch_size": 8,
    "loss.chunk_size": 32,
    "log_every_steps": 1,
    "ckpt.every_steps": 2,
    "ckpt.async_save": False,
    "schedule.warmup_steps": 2,
    "metrics.console": False,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from glmvoice_jax.corpora import demo_corpus

    root = tmp_path_factory.mktemp("corpus")
    demo_corpus.write_demo_corpus(str(root / "corpus"), docs_per_source=60, num_shards=2)
    return str(root / "corpus")


def _config(corpus, total_steps, **extra):
    from glmvoice_jax import config_lib

    c = config_lib.load_config_file(_DEMO)
    for key, value in {**_TINY, **extra, "total_steps": total_steps}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    for name in c.input.sources:
        c.input.sources[name].paths = f"{corpus}/{name}/*.array_record"
    return c


def _losses(workdir):
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.mark.e2e
def test_training_resumes_from_the_step_before_a_damaged_one(corpus, tmp_path, capsys):
    from glmvoice_jax.trainers import lm

    wd = str(tmp_path / "run")
    lm.train(_config(corpus, 4), wd)
    first = _losses(wd)
    ckpts = tmp_path / "run" / "checkpoints"
    _truncate("params/d/*")(str(ckpts / "4"))
    capsys.readouterr()
    out = lm.train(_config(corpus, 4), wd)
    printed = capsys.readouterr().out
    assert re.search(
        r"checkpoint step 4 in .* is damaged \(params/d/[0-9a-f]+ is truncated .*\): kept as 4\."
        r"damaged, resuming from step 2",
        printed,
    ), printed
    assert "resumed from step 2" in printed
    assert out["step"] == 4 and (ckpts / "4.damaged").is_dir() and (ckpts / "4").is_dir()
    again = _losses(wd)
    assert sorted(again) == [1, 2, 3, 4]
    np.testing.assert_allclose([again[3], again[4]], [first[3], first[4]], rtol=1e-6)


@pytest.mark.e2e
def test_training_resume_with_another_model_shape_names_both(corpus, tmp_path):
    from glmvoice_jax.trainers import lm

    wd = str(tmp_path / "run")
    lm.train(_config(corpus, 2), wd)
    with pytest.raises(errors.UserError) as err:
        lm.train(_config(corpus, 4, **{"model.mlp_dim": 96}), wd)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    assert "another model shape than the config (checkpoint vs config): mlp_dim 64 vs 96" in msg
    assert "layers/mlp/up/kernel (2, 32, 64) vs (2, 32, 96)" in msg, msg


@pytest.mark.e2e
def test_training_init_from_a_decoder_checkpoint_names_both_classes(corpus, tmp_path):
    from glmvoice_jax.trainers import lm

    src = str(tmp_path / "decoder")
    checkpoint.write_weights(
        src, {"w": np.zeros(2, np.float32)}, {"model_class": "DecoderConfig", "model": {}}
    )
    with pytest.raises(
        errors.UserError,
        match=r"init_from checkpoint .*decoder holds a Decoder"
        r"Config model \(the speech decoder\), not a GLMConfig",
    ):
        lm.train(_config(corpus, 2, init_from=src), str(tmp_path / "run"))


def _train_cli(corpus, wd):
    import sys

    cmd = [sys.executable, "-m", "glmvoice_jax.cli.train", f"--config={_DEMO}", f"--workdir={wd}"]
    cmd += [f"--config.{k}={v}" for k, v in {**_TINY, "total_steps": 4}.items()]
    for name in ("text", "speech", "interleaved"):
        cmd.append(f"--config.input.sources.{name}.paths={corpus}/{name}/*.array_record")
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "GLMVOICE_DEBUG": "0",
    }
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.e2e
def test_cli_resume_over_a_damaged_step_prints_one_line_not_tracebacks(corpus, tmp_path):
    from glmvoice_jax.trainers import lm

    wd = tmp_path / "run"
    lm.train(_config(corpus, 4), str(wd))
    _truncate("params/d/*")(str(wd / "checkpoints" / "4"))
    proc = _train_cli(corpus, wd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("is damaged") == 1 and "resuming from step 2" in out, out[-3000:]
    assert "Traceback" not in out and "Event loop is closed" not in out, out[-3000:]


@pytest.mark.e2e
def test_cli_resume_with_no_intact_step_is_one_error_line(corpus, tmp_path):
    wd = tmp_path / "run"
    _save(wd / "checkpoints")  # what is in the steps does not matter: both are damaged
    _empty(str(wd / "checkpoints" / "4"))
    _no_params(str(wd / "checkpoints" / "2"))
    proc = _train_cli(corpus, wd)
    errs = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errs) == 1 and "no intact checkpoint to resume from" in errs[0], proc.stderr[-3000:]
    assert "step 4: empty directory" in errs[0] and "step 2: its params/" in errs[0], errs[0]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
