"""A new voice at tiny scale: fine-tune the demo flow on one espeak-ng voice, measure the move.

Issue 19 item 3 (docs/decoder_training.md holds the numbers). Starts from the flow trained by
bench/decoder_reconstruction.py (``BASE/flow/decoder``) and fine-tunes it with
configs/decoder_new_voice.py (truncated samples, first n·0.8 s) on the training utterances of one
voice of the `make demo` corpus (``--voice``, default en-029+f4). Then it decodes held-out
sentences spoken by the *other* voices, with the base and the fine-tuned decoders (Griffin-Lim
vocoder, deterministic mode). If the fine-tune worked, the fine-tuned decoder should speak them
in the target voice.

Speaker-similarity proxy (simple and documented, not a speaker-verification model): the cosine
similarity of time-averaged MFCCs (librosa, 20 coefficients without c0, 22050 Hz) between a
decoded utterance and a voice centroid. A centroid is the mean of that voice's real held-out
utterances. The script reports the mean similarity to the target voice and to the utterance's
own source voice, for both decoders.

    python bench/decoder_new_voice.py --demo runs/demo --base runs/decoder_demo \
        --workdir runs/decoder_voice [--steps 150] [--utterances 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import librosa
import numpy as np

from glmvoice_jax import config_lib
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.inference import speech_decoding
from glmvoice_jax.models.speech_decoder import mel as mel_lib
from glmvoice_jax.trainers import speech_decoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def mfcc_mean(wav: np.ndarray) -> np.ndarray:
    """(19,) time-averaged MFCCs c1..c19 of a 22050 Hz waveform: the voice proxy's vector."""
    m = librosa.feature.mfcc(y=wav, sr=mel_lib.SAMPLE_RATE, n_mfcc=20)  # (20, frames)
    return m[1:].mean(axis=1)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--base", default="runs/decoder_demo")
    ap.add_argument("--workdir", default="runs/decoder_voice")
    ap.add_argument("--voice", default="en-029+f4")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--utterances", type=int, default=8)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result: dict = {"voice": args.voice, "uptime_before": up}
    espeak = os.path.join(args.demo, "espeak")

    def absolute(r: dict) -> dict:
        return {**r, "audio": os.path.abspath(os.path.join(espeak, r["audio"]))}

    train = [absolute(r) for r in _rows(os.path.join(espeak, "train.jsonl"))]
    held = [absolute(r) for r in _rows(os.path.join(espeak, "heldout.jsonl"))]
    voice_ids = {r["id"] for r in train if r["speaker"] == args.voice}
    manifest = _write(os.path.join(args.workdir, "voice_audio.jsonl"),
                      [r for r in train if r["id"] in voice_ids])  # fmt: skip
    tokens = _write(os.path.join(args.workdir, "voice_tokens.jsonl"),
                    [r for r in _rows(os.path.join(args.demo, "tokens", "train.jsonl"))
                     if r["id"] in voice_ids])  # fmt: skip
    base = os.path.join(args.base, "flow", "decoder")

    # 1. Fine-tune (configs/decoder_new_voice.py: first n·0.8 s of each utterance).
    flow_dir = os.path.join(args.workdir, "flow")
    config = config_lib.load_config_file(
        os.path.join(
            REPO, "configs", f"decoder_new_voice.py:vocab=256,rate=12.5,steps={args.steps}"
        )
    )
    config.init_from = base
    config.input.manifest, config.input.tokens = manifest, tokens
    config.evals.every_steps = config.ckpt.every_steps = max(args.steps // 2, 1)
    config.evals.max_utterances = 16
    start = time.time()
    speech_decoder.train(config, flow_dir)
    result["train_minutes"] = (time.time() - start) / 60
    result["train_utterances"] = len(voice_ids)
    with open(os.path.join(flow_dir, "metrics.jsonl"), encoding="utf-8") as f:
        result["curve"] = [
            {k: r[k] for k in ("step", "eval_loss", "eval_mel_l1")}
            for r in map(json.loads, f)
            if "eval_loss" in r
        ]

    # 2. Held-out sentences of the other voices, decoded by both decoders.
    others = [r for r in held if r["speaker"] != args.voice]
    pick = others[:: max(1, len(others) // args.utterances)][: args.utterances]
    held_tokens = {r["id"]: r for r in _rows(os.path.join(args.demo, "tokens", "heldout.jsonl"))}
    sources = [{"id": r["id"], "tokens": held_tokens[r["id"]]["tokens"]} for r in pick]
    subset = _write(os.path.join(args.workdir, "sources.jsonl"), sources)
    decoded = {}
    for name, ckpt in (("base", base), ("fine_tuned", os.path.join(flow_dir, "decoder"))):
        out = os.path.join(args.workdir, name)
        speech_decoding.decode_file(decoder_checkpoint.load_any(ckpt), subset, out, noise="zeros")
        decoded[name] = [mel_lib.load_audio(os.path.join(out, f"{r['id']}.wav")) for r in pick]

    # 3. Voice centroids from real held-out audio; similarities.
    centroids = {}
    for voice in sorted({r["speaker"] for r in held}):
        vecs = [mfcc_mean(mel_lib.load_audio(r["audio"])) for r in held if r["speaker"] == voice]
        centroids[voice] = np.mean(vecs[:20], axis=0)
    for name, wavs in decoded.items():
        vecs = [mfcc_mean(w) for w in wavs]
        result[name] = {
            "similarity_to_target_voice": float(
                np.mean([cosine(v, centroids[args.voice]) for v in vecs])
            ),
            "similarity_to_source_voice": float(
                np.mean([cosine(v, centroids[r["speaker"]]) for v, r in zip(vecs, pick)])
            ),
        }
    real = [mfcc_mean(mel_lib.load_audio(r["audio"])) for r in pick]
    result["real_sources"] = {
        "similarity_to_target_voice": float(
            np.mean([cosine(v, centroids[args.voice]) for v in real])
        ),
        "similarity_to_source_voice": float(
            np.mean([cosine(v, centroids[r["speaker"]]) for v, r in zip(real, pick)])
        ),
    }
    result["sources"] = [{"id": r["id"], "voice": r["speaker"]} for r in pick]
    result["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True
    ).stdout.strip()
    with open(os.path.join(args.workdir, "new_voice.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
