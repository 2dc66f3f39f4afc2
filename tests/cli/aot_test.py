"""glmvoice-aot: topology names, the CPU path, and (opt-in: needs libtpu) real TPU compiles."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from glmvoice_jax import config_lib
from glmvoice_jax.models import whisper_vq
from glmvoice_jax.trainers import aot as aot_steps
from glmvoice_jax.trainers import preflight

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "configs", "demo_tiny.py")
TOKENIZER = os.path.join(REPO, "configs", "tokenizer_12hz.py") + ":tiny"
# The tiny tokenizer cut to 2 + 1 layers, 2 s of audio and 16 decoder positions: a fast compile.
TOKENIZER_TINY = {
    "model.num_layers": 2,
    "model.pooling_position": 1,
    "model.quantize_position": 1,
    "model.num_decoder_layers": 1,
    "input.max_audio_secs": 2.0,
    "input.max_text_tokens": 16,
    "input.global_batch_size": 8,
    "evals.batch_size": 8,
    "evals.max_new_tokens": 8,
}
TINY = {
    "model.embed_dim": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.num_kv_heads": 1,
    "model.head_dim": 16,
    "model.mlp_dim": 64,
    "input.seq_len": 64,
    "input.global_batch_size": 8,
    "loss.chunk_size": 32,
}


@pytest.mark.parametrize(
    ("name", "topology", "chips", "wrap"),
    [
        ("v5p-8", "v5:2x2x1", 4, (False, False, False)),
        ("v5p-128", "v5:4x4x4", 64, (True, True, True)),
        ("v5p-512", "v5:4x8x8", 256, (True, True, True)),
        ("v6e-256", "v6e:16x16", 256, (True, True, False)),
        ("v6e-8", "v6e:2x4", 8, (False, False, False)),
        ("2xv6e-256", "v6e:16x16", 512, (True, True, False)),
        ("v4-32", "v4:2x2x4", 16, (False, False, False)),
        ("v5p:4x4x8", "v5:4x4x8", 128, (True, True, True)),
    ],
)
def test_topology_names(name, topology, chips, wrap):
    t = preflight.parse_topology(name)
    assert (t.topology_name, t.num_chips, t.wrap) == (topology, chips, wrap)


@pytest.mark.parametrize(
    ("name", "message"),
    [("v7-8", "unknown topology"), ("v5p-12", "not a power of two"), ("v5p-3", "multiple")],
)
def test_bad_topology_names(name, message):
    with pytest.raises(ValueError, match=message):
        preflight.parse_topology(name)


def _tiny_config(spec=DEMO, base=TINY, **extra):
    c = config_lib.load_config_file(spec)
    for key, value in {**base, **extra}.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_cpu_compile_and_benchmark():
    r = preflight.report(
        _tiny_config(**{"model.remat_policy": "full"}), "cpu", 0.5, benchmark_steps=1
    )
    assert r["chips"] == 8 and r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    mem = r["memory"]
    assert mem["arguments"] > 0 and mem["temps"] > 0
    assert (
        mem["total"]
        == mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temps"] + (mem["code"])
    )
    assert r["measured_step_s"] > 0 and r["remat_policy"] == "full"
    assert r["units"] == "tokens" and r["tokens_per_step"] == 8 * 64
    text = preflight.format_report(r)
    assert "per-device memory" in text and "measured:" in text and "tokens/s/chip" in text


@pytest.mark.e2e  # 20 s: make test-e2e; the LM step's CPU compile stays in make test
def test_cpu_compile_of_the_speech_tokenizer_step():
    r = preflight.report(_tiny_config(TOKENIZER, TOKENIZER_TINY), "cpu", 0.5, benchmark_steps=1)
    assert r["trainer"] == "speech_tokenizer" and r["remat_policy"] == "none"
    assert r["units"] == "audio seconds" and r["units_per_step"] == 8 * 2.0
    assert r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1} and r["measured_step_s"] > 0
    assert r["memory"]["arguments"] > 0 and r["memory"]["temps"] > 0
    # Layers are unrolled, so XLA counts every op: the model FLOPs (matmuls and the attention
    # pairs the masks let through) must be a large part of it, and no more than all of it.
    xla_total = r["xla_flops_per_device"] * r["chips"]
    assert 0.6 * xla_total < r["model_flops_per_step"] < xla_total
    text = preflight.format_report(r)
    assert "speech_tokenizer step: global batch 8 utterances x 2 s" in text
    assert "audio seconds/s/chip" in text


def test_block_causal_pairs_and_stock_whisper_flops():
    assert aot_steps._block_causal_pairs(5, 2) == 2 + 2 + 4 + 4 + 5
    assert aot_steps._block_causal_pairs(5, None) == 25
    assert aot_steps._block_causal_pairs(5, 1) == 15  # plain causal
    cfg = whisper_vq.VARIANTS["whisper_large_v3"]
    # Stock large-v3, 30 s, 448 tokens, no VQ, by hand (x 3 for forward + backward):
    #   encoder matmuls 6 * 32 * (4 D^2 + 2 D F) * 1500                = 5.66e12
    #   decoder self/cross-q,o/MLP 6 * 32 * (6 D^2 + 2 D F) * 448      = 1.97e12
    #   cross k/v 6 * 32 * 2 D^2 * 1500 + head 6 * 448 * V D           = 0.94e12 + 0.18e12
    #   attention 3 * 4 D * 32 * (1500^2 + 448 * 449 / 2 + 448 * 1500) = 1.49e12
    #   conv stem 3 * (6 M D * 3000 + 6 D^2 * 1500)                    = 0.05e12
    flops = aot_steps.speech_tokenizer_flops(cfg, mel_frames=3000, text_tokens=448)
    assert flops == pytest.approx(10.29e12, rel=0.01)


def test_unknown_trainer_is_refused():
    c = _tiny_config()
    with c.unlocked():
        c.trainer = "vocoder"
    with pytest.raises(ValueError, match="compiles the steps of"):
        aot_steps.build(c, [])


needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu (tpu extra)"
)


def _aot_cli(tmp_path, config, overrides):
    out = tmp_path / "r.json"
    args = [sys.executable, "-m", "glmvoice_jax.cli.aot", f"--config={config}", "--topology=v5p-8"]
    args += [f"--config.{k}={v}" for k, v in overrides.items()] + [f"--output={out}"]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 x TPU v5" in proc.stdout and "fits" in proc.stdout
    r = json.loads(out.read_text())
    assert r["chips"] == 4 and r["hbm_bytes"] == int(95.74 * 2**30) and r["fits"]
    assert 0 < r["memory"]["total"] < r["hbm_bytes"]
    return r


@needs_libtpu
def test_tpu_topology_compile(tmp_path):
    _aot_cli(tmp_path, DEMO, TINY)


@needs_libtpu
def test_tpu_compile_of_the_offload_preset_uses_host_memory(tmp_path):
    r = _aot_cli(tmp_path, DEMO, {**TINY, "model.remat_policy": "offload"})
    assert r["remat_policy"] == "offload" and r["memory"]["host_temps"] > 0


@needs_libtpu
def test_tpu_compile_of_the_speech_tokenizer_step(tmp_path):
    r = _aot_cli(tmp_path, TOKENIZER, {**TOKENIZER_TINY, "model.remat": True})
    assert r["trainer"] == "speech_tokenizer" and r["remat_policy"] == "per layer"


DECODER = os.path.join(REPO, "configs", "decoder_tiny.py") + ":vocab=16"
DECODER_TINY = {"input.max_tokens": 12, "input.global_batch_size": 8, "evals.batch_size": 8}


@pytest.mark.e2e  # a flow train-step compile on 2 loaded cores
def test_cpu_compile_of_the_speech_decoder_step():
    r = preflight.report(_tiny_config(DECODER, DECODER_TINY), "cpu", 0.5, benchmark_steps=1)
    assert r["trainer"] == "speech_decoder" and r["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert r["mel_frames_per_utterance"] == 82 and r["units_per_step"] == 8 * 12 / 12.5
    assert r["memory"]["arguments"] > 0 and r["measured_step_s"] > 0
    # No loops in the step: XLA counts every op of forward + backward, about 3 x the forward.
    xla_total = r["xla_flops_per_device"] * r["chips"]
    assert 0.5 * xla_total < r["model_flops_per_step"] < 2.0 * xla_total
    assert "speech_decoder step: global batch 8 utterances x 12 tokens" in preflight.format_report(
        r
    )


@needs_libtpu
def test_tpu_compile_of_the_speech_decoder_step(tmp_path):
    r = _aot_cli(tmp_path, DECODER, DECODER_TINY)
    assert r["trainer"] == "speech_decoder" and r["units"] == "audio seconds"
