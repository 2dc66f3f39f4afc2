r"""Generation engine on CPU: prefill and decode tokens/s, and the chat tool's first-audio latency.

Usage:
  python bench/inference.py [--checkpoint runs/demo] [--tokenizer runs/demo/tokenizer]
      [--decoder DEC] [--dtype float32]

Without --checkpoint a randomly initialised ``tiny`` GLM (4 layers, d 128, demo layout) is used:
the cost per token is the same. Every figure is taken after a first pass that compiles.

* prefill: ``Engine.prompt_logits`` on prompts of 256 tokens, 1 and 8 per batch;
* decode: 128 new tokens per request (temperature 1, no stop), 1, 8 and 32 requests per batch,
  16 steps per device call; and 1 step per call (how glmvoice-chat streams);
* first audio: one glmvoice-chat turn (``chat.respond``; the base template of the demo model)
  on an espeak-ng question, warm: time to the first text token, the first speech token and the
  first audio sample. The decoder is the untrained ``tiny`` preset unless --decoder is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from glmvoice_jax import checkpoint  # noqa: E402
from glmvoice_jax.convert.decoder import decoder_checkpoint  # noqa: E402
from glmvoice_jax.corpora import espeak  # noqa: E402
from glmvoice_jax.data import token_layout  # noqa: E402
from glmvoice_jax.inference import chat, engine, speech_tokenization  # noqa: E402
from glmvoice_jax.inference.chat_template import UserTurn  # noqa: E402
from glmvoice_jax.models import glm  # noqa: E402
from glmvoice_jax.models.speech_decoder import config as decoder_config  # noqa: E402


def _engine(args, **overrides) -> engine.Engine:
    cfg = engine.EngineConfig(dtype=args.dtype, **overrides)
    if args.checkpoint:
        return engine.Engine.from_checkpoint(args.checkpoint, cfg)
    model = glm.GLMDecoder(glm.VARIANTS["tiny"], rngs=nnx.Rngs(0))
    return engine.Engine.from_model(model, token_layout.get("demo"), cfg)


def _timed(fn, repeats: int = 3) -> float:
    fn()  # compiles
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_prefill(args) -> list[dict]:
    rows = []
    for batch in (1, 8):
        eng = _engine(args, batch_size=batch)
        rng = np.random.default_rng(0)
        prompts = [rng.integers(0, 256, size=256) for _ in range(batch)]
        secs = _timed(lambda: eng.prompt_logits(prompts))  # noqa: B023
        rows.append(
            {"what": f"prefill, {batch} x 256 tokens", "tokens_per_sec": batch * 256 / secs}
        )
    return rows


def bench_decode(args) -> list[dict]:
    rows = []
    for batch, steps in ((1, 16), (8, 16), (32, 16), (1, 1)):
        eng = _engine(args, batch_size=batch, steps_per_call=steps)
        params = engine.SamplingParams(temperature=1.0, max_new_tokens=128)
        reqs = [
            engine.Request(list(eng.layout.bos_ids) + [65 + i], params, i) for i in range(batch)
        ]
        eng.generate(reqs)  # compiles
        start = time.perf_counter()
        out = eng.generate(reqs)
        secs = time.perf_counter() - start
        new = sum(c.tokens.size for c in out)
        rows.append(
            {
                "what": f"decode, batch {batch}, {steps} step(s) per call",
                "tokens_per_sec": new / secs,
                "per_request_tokens_per_sec": new / secs / batch,
            }
        )
    return rows


def bench_first_audio(args, workdir: str) -> dict:
    lm = args.checkpoint
    if lm is None:
        return {"what": "first audio", "skipped": "needs --checkpoint and --tokenizer"}
    _, tok = speech_tokenization.load_model(args.tokenizer)
    dec = args.decoder
    if dec is None:
        dec = os.path.join(workdir, "decoder")
        cfg = decoder_config.VARIANTS["tiny"]
        flow = dataclasses.replace(cfg.flow, vocab_size=tok.config.codebook_size)
        decoder_checkpoint.write_untrained(dataclasses.replace(cfg, flow=flow), dec)
    config = engine.EngineConfig(dtype=args.dtype, batch_size=1, steps_per_call=1, max_context=2048)
    models = chat.load(lm, args.tokenizer, dec, config)
    wav = os.path.join(workdir, "question.wav")
    espeak.check_tools("bench/inference.py")
    espeak.synthesize("What did the sailor sell at the market?", wav, "en-us", 150, 50)
    sampling = engine.SamplingParams(temperature=0.2, top_p=0.8, max_new_tokens=100)
    timings = []
    for turn in range(2):  # the first compiles
        start = time.perf_counter()
        user = UserTurn(speech=chat.read_speech(wav, models, 1000))
        t = chat.respond(
            models, user, [], sampling=sampling, seed=turn, start=start,
            wav_path=os.path.join(workdir, f"reply{turn}.wav"),
        ).timings  # fmt: skip
        timings.append(t)
    t = timings[-1]
    return {
        "what": "first audio (warm chat turn)",
        **{
            k: t[k]
            for k in ("first_text_token_secs", "first_speech_token_secs", "first_audio_secs")
        },
        "tokens_per_sec": t["tokens_per_sec"],
        "decoder": "untrained tiny preset" if args.decoder is None else args.decoder,
        "first_turn_first_audio_secs": timings[0]["first_audio_secs"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None, help="GLM checkpoint (default: random tiny)")
    ap.add_argument("--tokenizer", default="runs/demo/tokenizer")
    ap.add_argument("--decoder", default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.checkpoint:
        checkpoint.read_meta(args.checkpoint)  # fail early on a bad path
    load = os.getloadavg()
    devices = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    print(f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; {devices}")
    rows = bench_prefill(args) + bench_decode(args)
    with tempfile.TemporaryDirectory() as workdir:
        rows.append(bench_first_audio(args, workdir))
    for r in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    print(f"load after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": load, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
