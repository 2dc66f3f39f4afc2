"""Speech-tokenizer trainer: the real train() on 8 fake CPU devices, on a handful of espeak-ng
utterances, initialised from a tiny stock-Whisper checkpoint; the EMA/restart step on a
data-parallel mesh equals the single-device step.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from glmvoice_jax import checkpoint, config_lib, optim, sharding
from glmvoice_jax.convert.whisper import hf_whisper as convert_whisper
from glmvoice_jax.convert.whisper import whisper_import
from glmvoice_jax.inference import speech_tokenization
from glmvoice_jax.models.whisper_vq import WhisperVQ
from glmvoice_jax.trainers import speech_tokenizer as st
from glmvoice_jax.trainers import speech_tokenizer_setup as setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "tokenizer_12hz.py") + ":tiny"
NEEDS_ESPEAK = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="needs espeak-ng and sox (apt-get install -y espeak-ng sox)",
)
OVERRIDES = {
    "model.embed_dim": 32, "model.num_heads": 2, "model.mlp_dim": 64, "model.num_layers": 2,
    "model.pooling_position": 1, "model.quantize_position": 1, "model.codebook_size": 32,
    "model.vocab_size": 300, "model.num_decoder_layers": 1, "model.num_decoder_heads": 2,
    "model.decoder_mlp_dim": 64, "model.max_target_positions": 64, "model.restart_interval": 2,
    "text.vocab_size": 300, "input.espeak_max_sentences": 10, "input.global_batch_size": 8,
    "input.bucket_secs": 5.0, "input.max_text_tokens": 56, "vq.init_batches": 1,
    "evals.every_steps": 3, "evals.batch_size": 8, "evals.max_new_tokens": 6,
    "evals.max_utterances": 3, "evals.num_print": 0, "log_every_steps": 1,
    "ckpt.every_steps": 3, "mesh.data": 8, "mesh.fsdp": 1, "metrics.console": False,
    "schedule.warmup_steps": 1,
}  # fmt: skip


def _config(**extra):
    c = config_lib.load_config_file(CONFIG)
    for key, value in {**OVERRIDES, **extra}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _stock_whisper_dir(path, cfg):
    """A tiny HF WhisperForConditionalGeneration directory with the test model's dims."""
    stock = dataclasses.replace(
        cfg, use_causal_conv=False, attention_block_size=None, pooling_kernel=1,
        pooling_position=None, quantize_position=None,
    )  # fmt: skip
    return whisper_import.write_synthetic(path, stock, convert_whisper.STOCK)


@pytest.fixture
def compile_cache(tmp_path):
    """A persistent compilation cache for one test. Every train() call jits a fresh closure, so
    a resumed run compiles its (identical) step again: ~30 s here. With the cache it is read back.
    """
    from jax.experimental.compilation_cache import compilation_cache

    name = "jax_compilation_cache_dir"
    old = getattr(jax.config, name)
    jax.config.update(name, str(tmp_path / "jax_cache"))
    compilation_cache.reset_cache()  # the cache is set up once per process otherwise
    yield
    jax.config.update(name, old)
    compilation_cache.reset_cache()


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@NEEDS_ESPEAK
def test_init_from_whisper_train_and_resume(tmp_path, capsys, compile_cache):
    wd, src = str(tmp_path / "run"), str(tmp_path / "whisper")
    cfg = config_lib.tokenizer_model_config(_config())
    tensors = _stock_whisper_dir(src, cfg)
    # The weight import on its own: shared weights copied, embed_positions2 = the first rows.
    mesh = sharding.make_mesh({"data": 8})
    _, abs_params, param_sh = sharding.param_shardings(
        lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0)), mesh, "fsdp"
    )
    params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), abs_params)
    params, fresh = setup.init_from(src, cfg, params, param_sh)
    pos = tensors["model.encoder.embed_positions.weight"]
    rows = params["encoder"]["embed_positions2"].shape[0]
    np.testing.assert_array_equal(params["encoder"]["embed_positions2"], pos[:rows])
    np.testing.assert_array_equal(
        params["decoder"]["embed_tokens"], tensors["model.decoder.embed_tokens.weight"]
    )
    assert fresh and params["encoder"]["conv1"]["kernel"].sharding.spec == param_sh["encoder"][
        "conv1"]["kernel"].spec  # fmt: skip

    # train(): 3 steps (eval + checkpoint at 3), then a second run resumes to 5. A constant lr:
    # total_steps is then not baked into the step, and the resumed run reuses its executable.
    constant = {"schedule.decay": "constant"}
    out = st.train(_config(init_from=src, total_steps=3, **constant), wd)
    printed = capsys.readouterr().out
    assert "initialised weights from" in printed and "codebook initialised from data" in printed
    assert "bitrate: 12.5 Hz x 5 bits = 62.5 bps" in printed
    assert out["step"] == 3 and out["eval_cer"] >= 0.0 and np.isfinite(out["loss"])
    row = _metrics(wd)[-1]
    for key in ("loss", "asr_loss", "commit_loss", "codebook_usage", "codebook_perplexity",
                "grad_norm", "lr", "tokens_per_sec", "audio_secs_per_sec", "step_time",
                "eval_wer", "eval_cer", "codes_restarted", "mfu", "goodput",
                "time/device_step", "time/data_wait"):  # fmt: skip
        assert key in row and np.isfinite(row[key]), key
    assert 0 < row["codebook_usage"] <= 1 and 0 < row["mfu"] < 1
    meta = checkpoint.read_meta(os.path.join(wd, "checkpoints"))
    assert checkpoint.model_config_from_meta(meta) == cfg
    assert meta["extra"]["bitrate_bps"] == cfg.bitrate_bps == 12.5 * 5  # 32 codes = 5 bits
    tok = checkpoint.text_tokenizer(os.path.join(wd, "checkpoints"))
    assert tok.decode(tok.encode("the sun rose", add_prefix=False)) == "the sun rose"
    np.testing.assert_array_equal(  # never trained: still the imported table
        checkpoint.restore_params(
            os.path.join(wd, "checkpoints"),
            checkpoint.abstract_like(abs_params, param_sh),
        )["encoder"]["embed_positions"],
        pos,
    )
    out = st.train(
        _config(init_from=src, total_steps=5, **constant, **{"evals.every_steps": 0}), wd
    )
    assert out["step"] == 5 and [r["step"] for r in _metrics(wd)] == [1, 2, 3, 4, 5]
    # The training workdir is a CKPT for the tokenizer (it has a config.json but no safetensors).
    loaded_cfg, model = speech_tokenization.load_model(wd)
    assert loaded_cfg == cfg
    (tokens,) = speech_tokenization.tokenize_waveforms(model, [np.ones(16000, np.float32) * 0.1])
    assert tokens.shape == (13,) and tokens.max() < cfg.codebook_size  # ceil(16000 / 1280)


def _step_on(mesh_cfg, devices, cfg, config, batch):
    mesh = sharding.make_mesh(mesh_cfg, devices=devices)

    def make():
        return WhisperVQ(cfg, rngs=nnx.Rngs(0))

    graphdef, abs_params, param_sh = sharding.param_shardings(make, mesh, "fsdp")
    mask = setup.param_mask(make, abs_params)
    tx = optim.make(
        config.optim,
        optim.schedule(config.schedule, 10),
        setup.subset(abs_params, mask, keep=True),
    )
    step = st.make_train_step(graphdef, tx, cfg, config, mask)
    replicated = NamedSharding(mesh, PartitionSpec())
    # Weights drawn with numpy (jit-compiling the random init costs ~15 s on a busy 2-core box).
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (rng.normal(size=x.shape) * 0.1).astype(x.dtype), abs_params)
    params["encoder"]["quantizer"]["ema_count"] = np.ones((cfg.codebook_size,), np.float32)
    params["encoder"]["quantizer"]["ema_weight"] = params["encoder"]["quantizer"]["codebook"]
    params["encoder"]["quantizer"]["ema_steps"] = np.zeros((), np.int32)
    params = jax.device_put(params, param_sh)
    with sharding.activate(mesh, "fsdp"):
        train = {
            "opt": tx.init(setup.subset(params, mask, keep=True)),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(0)),
            "last_used": jnp.full((cfg.codebook_size,), -(2**30), jnp.int32),
        }
        train_sh = setup.train_shardings(train, abs_params, param_sh, replicated)
        train = jax.device_put(train, train_sh)
        batch_sh = {k: sharding.batch_sharding(mesh, "fsdp", v.ndim) for k, v in batch.items()}
        # Shardings pinned as in the trainer: step 2 then reuses step 1's executable (with the
        # train shardings left to XLA, the 8-device step compiled twice: ~30 s on this box).
        fn = jax.jit(
            step,
            in_shardings=(param_sh, train_sh, batch_sh),
            out_shardings=(param_sh, train_sh, replicated),
        )
        outs = []
        for _ in range(2):
            params, train, out = fn(params, train, jax.device_put(batch, batch_sh))
            outs.append(out)
    return jax.device_get(params["encoder"]["quantizer"]), jax.device_get(outs)


def test_ema_and_restart_on_data_parallel_mesh_equal_single_device():
    config = _config(**{"model.restart_interval": 1})
    cfg = config_lib.tokenizer_model_config(config)
    rng = np.random.default_rng(0)
    b, u = 8, 12
    lens = rng.integers(8000, 16000, size=b)
    batch = {
        "wav": (rng.normal(size=(b, 16000)) * 0.1).astype(np.float32),
        "wav_len": lens.astype(np.int32),
        "dec_in": rng.integers(4, 300, size=(b, u)).astype(np.int32),
        "dec_target": rng.integers(4, 300, size=(b, u)).astype(np.int32),
        "dec_weight": np.ones((b, u), np.float32),
        "dec_valid": np.ones((b, u), bool),
    }
    q8, out8 = _step_on({"data": 2, "fsdp": 4}, jax.devices(), cfg, config, batch)
    q1, out1 = _step_on({"data": 1}, jax.devices()[:1], cfg, config, batch)
    restarted = [int(o["codes_restarted"]) for o in out1]
    assert sum(restarted) > 0  # restarts happened inside the step
    assert restarted == [int(o["codes_restarted"]) for o in out8]
    for key in ("codebook", "ema_count", "ema_weight"):
        np.testing.assert_allclose(q8[key], q1[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert int(q8["ema_steps"]) == int(q1["ema_steps"]) == 2
    for o8, o1 in zip(out8, out1):
        np.testing.assert_allclose(o8["loss"], o1["loss"], rtol=1e-4)
        assert o8["num_active_codes"] == o1["num_active_codes"]


def test_validate_names_the_field():
    with pytest.raises(ValueError, match="input.max_audio_secs"):
        config_lib.validate_speech_tokenizer(_config(**{"input.max_audio_secs": 40.0}))
    with pytest.raises(ValueError, match="text.vocab_size"):
        config_lib.validate_speech_tokenizer(_config(**{"text.vocab_size": 100}))
    with pytest.raises(ValueError, match="'speech_tokenizer'"):
        config_lib.validate_speech_tokenizer(_config(trainer="lm"))
