"""Real-time factor of the speech decoder on this machine, whole-utterance and streaming.

The model has the release config's dimensions (VARIANTS["glm4_voice_decoder"]: flow 111 M +
HiFT 20 M parameters) with random weights; speed does not depend on the values. Deterministic
mode (decoder.md §14), float32. Default input: 125 tokens = 10.0 s of audio (861 mel frames).

* whole: ``tokens_to_audio`` (one flow call: 10 Euler steps x 2 CFG passes of the U-Net, then
  HiFT), as glmvoice-decode does.
* streaming: ``stream_decode`` with the web-demo schedule (25, 50, then the remaining 50 tokens
  finalized for N = 125). Every chunk re-runs the flow on the whole history (decoder.md §12.1),
  so the flow work grows to (172 + 516 + 861) / 861 = 1.8x the whole-utterance work.
  first-chunk latency = time from the call to the first emitted audio (25 tokens, 1.59 s).
RTF = wall time / audio duration, median of --repeats warm runs (compile excluded and reported
separately). Also reported: the largest |whole - streaming| sample difference.

Fast modes are named ``<whole|streaming>[_bf16][_s<N>][_h<H>]`` and are opt-in options of the
decoder: _bf16 = ``matmul_dtype="bfloat16"`` (the estimator's transformer matmuls take bfloat16
inputs with float32 accumulation), _s<N> = ``n_steps=N`` Euler steps instead of 10 (same cosine
t-schedule), _h<H> = ``history_tokens=H`` (streaming only: each chunk's flow sees the last H
earlier tokens, not the whole history). ``fast`` / ``streaming_fast`` name the presets
``FAST_MODE`` / ``STREAMING_FAST_MODE``. Each fast mode reports its mel / sample distance from
the exact mode of the same kind ("vs_exact", when that mode ran too). See docs/decoder_speed.md.
--modes export adds the jax.export artifact (size, export time, RTF of ``call``, difference to
whole).

    python bench/decoder_rtf.py [--tokens 125] [--repeats 3] [--modes ...] [--out FILE]

Not a test. Other processes on the machine slow it down: the load average before and after is
printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np
from flax import nnx

from glmvoice_jax.convert.decoder import decoder_pt
from glmvoice_jax.models.speech_decoder import (
    VARIANTS,
    DecoderConfig,
    SpeechDecoder,
    export,
    tokens_to_audio,
)
from glmvoice_jax.models.speech_decoder.layers import frames_from_tokens
from glmvoice_jax.models.speech_decoder.speech_decoder import FAST_MODE
from glmvoice_jax.models.speech_decoder.stream import STREAMING_FAST_MODE, stream_decode

DEFAULT_MODES = "whole,streaming,whole_bf16,streaming_bf16,fast,streaming_fast"


def parse_mode(mode: str) -> tuple[str, dict]:
    """'streaming_bf16_s5_h25' → ('streaming', {matmul_dtype, n_steps, history_tokens})."""
    if mode == "fast":
        return "whole", dict(FAST_MODE)
    if mode == "streaming_fast":
        return "streaming", dict(STREAMING_FAST_MODE)
    kind, *opts = mode.split("_")
    if kind not in ("whole", "streaming"):
        raise SystemExit(f"unknown mode {mode!r}: expected whole..., streaming..., export")
    options: dict = {}
    for opt in opts:
        if opt == "bf16":
            options["matmul_dtype"] = "bfloat16"
        elif opt[:1] == "s" and opt[1:].isdigit():
            options["n_steps"] = int(opt[1:])
        elif opt[:1] == "h" and opt[1:].isdigit() and kind == "streaming":
            options["history_tokens"] = int(opt[1:])
        else:
            raise SystemExit(f"unknown option {opt!r} in mode {mode!r} (bf16, s<N>, h<H>)")
    return kind, options


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores_visible": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()[:1]],
        "loadavg_before": os.getloadavg(),
    }


def random_decoder(cfg: DecoderConfig, seed: int = 0) -> SpeechDecoder:
    """Random weights at init-like scales, drawn in numpy (tracing nnx.Rngs takes minutes).

    Kernels N(0, 1/fan_in), embeddings N(0, 1), norm scales and Snake alphas 1, biases 0.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in decoder_pt.param_shapes(cfg).items():
        name = path.rsplit("/", 1)[-1]
        if name == "kernel":
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        elif name in ("embedding", "pos_bias_u", "pos_bias_v"):
            value = rng.standard_normal(shape) * (1.0 if name == "embedding" else 0.1)
        elif name == "bias":
            value = np.zeros(shape)
        else:  # LayerNorm / GroupNorm scale, Snake alpha
            value = np.ones(shape)
        params[path] = value.astype(np.float32)
    return decoder_pt.build_decoder(cfg, params)


def distance(wav: np.ndarray, ref: np.ndarray) -> dict:
    """Sample differences of two waveforms over their common length (float32 at 22050 Hz)."""
    n = min(wav.size, ref.size)
    diff = np.abs(wav[:n] - ref[:n])
    return {
        "max_abs": float(diff.max()),
        "rms_diff": float(np.sqrt(np.mean(diff**2))),
        "rms_ref": float(np.sqrt(np.mean(ref[:n] ** 2))),
    }


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """(compile + first run secs, warm run secs)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return first, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=125)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default="glm4_voice_decoder", choices=sorted(VARIANTS))
    parser.add_argument(
        "--modes",
        default=DEFAULT_MODES,
        help="comma-separated: whole, streaming, export, fast, streaming_fast, or "
        "<whole|streaming>[_bf16][_s<N>][_h<H>] (module docstring)",
    )
    parser.add_argument("--out", default=None, help="also append the JSON result to this file")
    args = parser.parse_args()

    info = machine()
    cfg = VARIANTS[args.variant]
    t = time.perf_counter()
    model = random_decoder(cfg)
    init_secs = time.perf_counter() - t
    tokens = np.random.default_rng(0).integers(0, cfg.flow.vocab_size, args.tokens)
    frames = frames_from_tokens(args.tokens, cfg.flow.input_frame_rate)
    audio_secs = frames * cfg.hift.upsample_factor / cfg.hift.sampling_rate
    result = {
        "machine": info,
        "variant": args.variant,
        "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model)))),
        "tokens": args.tokens,
        "frames": frames,
        "audio_secs": round(audio_secs, 3),
        "init_secs": round(init_secs, 1),
    }
    modes = args.modes.split(",")
    wavs, mels = {}, {}
    for mode in modes:
        if mode == "export":
            continue
        kind, options = parse_mode(mode)
        if kind == "whole":
            out = {}

            def whole(options=options, out=out) -> None:
                out["mel"], out["wav"] = tokens_to_audio(model, tokens, **options)

            first, runs = timed(whole, args.repeats)
            wavs[mode], mels[mode] = out["wav"], out["mel"]
            result[mode] = {
                "options": options,
                "first_call_secs": round(first, 2),
                "warm_secs": [round(r, 2) for r in runs],
                "rtf": round(statistics.median(runs) / audio_secs, 3),
                "loadavg_after": os.getloadavg(),
            }
            continue
        latencies: list[float] = []
        out = {}

        def streaming(options=options, out=out, latencies=latencies) -> None:
            start = time.perf_counter()
            seen = []

            def on_chunk(speech, mel, chunk) -> None:
                if not seen:
                    latencies.append(time.perf_counter() - start)
                seen.append(chunk)

            out["wav"], out["chunks"] = stream_decode(model, tokens, on_chunk=on_chunk, **options)

        first, runs = timed(streaming, args.repeats)
        wavs[mode] = out["wav"]
        streamed_secs = out["wav"].size / cfg.hift.sampling_rate
        result[mode] = {
            "options": options,
            "chunks": [c.new_tokens for c in out["chunks"]],
            "flow_tokens": [c.new_tokens + c.prompt_tokens for c in out["chunks"]],
            "audio_secs": round(streamed_secs, 3),
            "first_call_secs": round(first, 2),
            "warm_secs": [round(r, 2) for r in runs],
            "rtf": round(statistics.median(runs) / streamed_secs, 3),
            "first_chunk_latency_secs_warm": round(statistics.median(latencies[1:]), 3),
            "first_chunk_latency_secs_cold": round(latencies[0], 2),
            "loadavg_after": os.getloadavg(),
        }
    for mode in wavs:
        exact = parse_mode(mode)[0]
        if mode == exact or exact not in wavs:
            continue
        result[mode]["vs_exact"] = distance(wavs[mode], wavs[exact])
        if mode in mels:
            d = np.abs(mels[mode] - mels[exact])
            result[mode]["vs_exact"]["mel_max_abs"] = float(d.max())
            result[mode]["vs_exact"]["mel_mean_abs"] = float(d.mean())
    if "export" in modes:
        t = time.perf_counter()
        platform = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
        blob = export.export_decoder(model, platforms=(platform,)).serialize()
        export_secs = time.perf_counter() - t
        exported = jax.export.deserialize(bytearray(blob))
        ids = np.asarray(tokens, np.int32)
        out = {}

        def call() -> None:
            out["wav"] = np.asarray(exported.call(ids))

        first, runs = timed(call, args.repeats)
        result["export"] = {
            "artifact_mb": round(len(blob) / 1e6, 1),
            "export_and_serialize_secs": round(export_secs, 1),
            "first_call_secs": round(first, 2),
            "warm_secs": [round(r, 2) for r in runs],
            "rtf": round(statistics.median(runs) / audio_secs, 3),
        }
        if "whole" in wavs:
            diff = np.abs(out["wav"] - wavs["whole"])
            result["export"]["max_abs_vs_whole"] = float(np.nanmax(diff))
    if "whole" in wavs and "streaming" in wavs:
        result["whole_vs_streaming"] = distance(wavs["streaming"], wavs["whole"])
    result["machine"]["loadavg_after"] = os.getloadavg()
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
