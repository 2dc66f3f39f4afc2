"""Speech-tokenizer throughput on this machine: audio seconds tokenized per second, train step.

* tokenize: ``speech_tokenization.tokenize_waveforms`` (log-mel on device, encoder up to the
  quantizer, nearest code) on random 16 kHz noise, with random weights, for the ``:tiny`` model
  of configs/tokenizer_12hz.py and the full 12.5 Hz model (whisper-large-v3 dims; only the 16
  layers before the quantizer run, so the model is built encoder-only with 16 layers).
* train step (tiny): the trainer's jitted step (log-mel, encoder + VQ-EMA + restarts, decoder,
  AdamW) on a batch of 16 utterances of 3 s.

Every figure is the median of timed repeats after a warm-up call (which compiles). The machine is
shared: the 1-minute load average and the float32 matmul peak measured in the same process are
printed with the results.

    python bench/tokenizer.py [--full] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from glmvoice_jax import config_lib, optim, sharding
from glmvoice_jax.inference import speech_tokenization
from glmvoice_jax.models.whisper_vq import VARIANTS, WhisperVQ
from glmvoice_jax.trainers import speech_tokenizer as trainer
from glmvoice_jax.trainers import speech_tokenizer_setup as setup

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "tokenizer_12hz.py")  # fmt: skip


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def random_model(cfg):
    """Random N(0, 0.02) weights drawn with numpy (a jitted random init compiles for minutes)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WhisperVQ(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def draw(x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return np.zeros(x.shape, x.dtype)
        return (rng.standard_normal(x.shape, np.float32) * 0.02).astype(x.dtype)

    nnx.replace_by_pure_dict(state, jax.tree.map(draw, nnx.to_pure_dict(state)))
    return nnx.merge(graphdef, state)


def bench_tokenize(name, cfg, secs_per_file, files, batch_size, repeats) -> dict:
    model = random_model(cfg)
    rng = np.random.default_rng(1)
    wavs = [(rng.standard_normal(int(secs_per_file * 16000)) * 0.1).astype(np.float32)
            for _ in range(files)]  # fmt: skip
    t = time.perf_counter()
    speech_tokenization.tokenize_waveforms(model, wavs, batch_size=batch_size)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        speech_tokenization.tokenize_waveforms(model, wavs, batch_size=batch_size)
        times.append(time.perf_counter() - t)
    audio = secs_per_file * files
    return {
        "bench": "tokenize",
        "model": name,
        "audio_secs": audio,
        "first_call_secs": round(first, 2),
        "audio_secs_per_sec": round(audio / statistics.median(times), 2),
    }


def bench_train_step(repeats: int) -> dict:
    config = config_lib.load_config_file(CONFIG + ":tiny")
    cfg = config_lib.tokenizer_model_config(config)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])

    def make():
        return WhisperVQ(cfg, rngs=nnx.Rngs(0))

    graphdef, abs_params, param_sh = sharding.param_shardings(make, mesh, "fsdp")
    mask = setup.param_mask(make, abs_params)
    trainable = setup.subset(abs_params, mask, keep=True)
    tx = optim.make(config.optim, optim.schedule(config.schedule, 1000), trainable)
    params = nnx.to_pure_dict(nnx.state(random_model(cfg)))
    b, u, n = 16, 48, 3 * 16000
    rng = np.random.default_rng(0)
    batch = {
        "wav": (rng.standard_normal((b, n)) * 0.1).astype(np.float32),
        "wav_len": np.full((b,), n, np.int32),
        "dec_in": rng.integers(4, cfg.vocab_size, (b, u)).astype(np.int32),
        "dec_target": rng.integers(4, cfg.vocab_size, (b, u)).astype(np.int32),
        "dec_weight": np.ones((b, u), np.float32),
        "dec_valid": np.ones((b, u), bool),
    }
    with sharding.activate(mesh, "fsdp"):
        params = jax.device_put(params, param_sh)
        train = jax.device_put(
            {
                "opt": tx.init(setup.subset(params, mask, keep=True)),
                "step": jnp.zeros((), jnp.int32),
                "rng": jax.random.key_data(jax.random.key(0)),
                "last_used": jnp.zeros((cfg.codebook_size,), jnp.int32),
            },
            NamedSharding(mesh, PartitionSpec()),
        )
        step = jax.jit(trainer.make_train_step(graphdef, tx, cfg, config, mask))
        t = time.perf_counter()
        params, train, out = step(params, train, batch)
        jax.block_until_ready(out["loss"])
        first = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            params, train, out = step(params, train, batch)
            jax.block_until_ready(out["loss"])
            times.append(time.perf_counter() - t)
    dt = statistics.median(times)
    return {
        "bench": "train_step",
        "model": "tokenizer_12hz:tiny",
        "batch": f"{b} x 3 s",
        "first_call_secs": round(first, 2),
        "step_secs": round(dt, 3),
        "audio_secs_per_sec": round(b * 3 / dt, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the full 12.5 Hz model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tiny = config_lib.tokenizer_model_config(config_lib.load_config_file(CONFIG + ":tiny"))
    results = [
        {
            "machine": f"{os.cpu_count()} CPUs, {jax.devices()[0].device_kind}",
            "load_avg_1min": os.getloadavg()[0],
            "matmul_f32_gflops": round(matmul_peak() / 1e9, 1),
        },  # fmt: skip
        bench_tokenize("tokenizer_12hz:tiny", tiny, 10.0, 16, 16, args.repeats),
        bench_train_step(max(args.repeats, 5)),
    ]
    if args.full:
        full = dataclasses.replace(
            VARIANTS["glm4_voice_tokenizer"], num_layers=16, num_decoder_layers=0
        )
        results.append(bench_tokenize("tokenizer_12hz (full, 16 layers)", full, 30.0, 2, 2, 1))
    results.append({"load_avg_1min_end": os.getloadavg()[0]})
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
