"""Tiny flow training on the `make demo` corpus, then reconstruction scores of held-out speech.

Issue 19's acceptance run at CPU scale (docs/decoder_training.md holds the measured numbers):

1. train the ``tiny`` flow (configs/decoder_tiny.py, Griffin-Lim vocoder) on the demo tokenizer's
   training tokens (``DEMO/tokens/train.jsonl``, 256 codes at 12.5 Hz) and the espeak-ng audio;
2. decode the first ``--utterances`` lines of the held-out sentences' tokens
   (``DEMO/tokens/heldout.jsonl``) with the trained decoder (``WORKDIR/decoder``, glmvoice-decode's
   library, deterministic mode);
3. score them against the original audio: PESQ (wide band), STOI, MCD (evals/reconstruction.py)
   and the Recon CER / WER of the demo tokenizer's ASR judge (the decoded audio re-tokenized and
   transcribed) beside the judge's CER / WER on the original tokens. The Griffin-Lim inversion of
   the *original* mel is scored the same way: the vocoder's own ceiling, so the flow's share of
   the loss can be read off.

    python bench/decoder_reconstruction.py --demo runs/demo --workdir runs/decoder_demo \
        [--steps 600] [--utterances 40] [--skip_train]

Not a test; writes WORKDIR/reconstruction.json and prints it. The machine load (``uptime``)
before and after is recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import numpy as np
import soxr

from glmvoice_jax import config_lib
from glmvoice_jax.convert.decoder import decoder_checkpoint
from glmvoice_jax.evals import reconstruction
from glmvoice_jax.inference import speech_decoding, speech_tokenization, transcription
from glmvoice_jax.models.speech_decoder import mel as mel_lib
from glmvoice_jax.trainers import speech_decoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _manifest(demo: str, split: str, out: str) -> str:
    """DEMO/espeak/SPLIT.jsonl with absolute audio paths ({"id", "audio", "text"})."""
    base = os.path.join(demo, "espeak")
    rows = _rows(os.path.join(base, f"{split}.jsonl"))
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            path = os.path.abspath(os.path.join(base, r["audio"]))
            f.write(json.dumps({"id": r["id"], "audio": path, "text": r["text"]}) + "\n")
    return out


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _at16k(w: np.ndarray) -> np.ndarray:
    return soxr.resample(w, mel_lib.SAMPLE_RATE, 16000, quality="HQ").astype(np.float32)


def _asr(tok_model, transcriber, wavs_16k: list[np.ndarray]) -> list[str]:
    codes = speech_tokenization.tokenize_waveforms(tok_model, wavs_16k)
    return transcriber.transcribe(codes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--workdir", default="runs/decoder_demo")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--utterances", type=int, default=40)
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--skip_decode", action="store_true", help="reuse WORKDIR/decoded/*.wav")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    result: dict = {"uptime_before": _uptime()}
    previous = os.path.join(args.workdir, "reconstruction.json")
    if os.path.exists(previous) and (args.skip_train or args.skip_decode):
        with open(previous, encoding="utf-8") as f:  # keep the timings of the reused stages
            old = json.load(f)
        for key in ("train_minutes", "decode_seconds", "uptime_before"):
            if key in old:
                result[f"{key}_of_reused_stages" if key == "uptime_before" else key] = old[key]
    work = args.workdir
    train_manifest = _manifest(args.demo, "train", os.path.join(work, "train_audio.jsonl"))
    held_manifest = _manifest(args.demo, "heldout", os.path.join(work, "heldout_audio.jsonl"))
    flow_dir = os.path.join(args.workdir, "flow")

    # 1. Train the flow.
    if not args.skip_train:
        config = config_lib.load_config_file(
            os.path.join(REPO, "configs", f"decoder_tiny.py:vocab=256,rate=12.5,steps={args.steps}")
        )
        config.input.manifest = train_manifest
        config.input.tokens = os.path.join(args.demo, "tokens", "train.jsonl")
        config.evals.every_steps = max(args.steps // 4, 1)
        config.ckpt.every_steps = max(args.steps // 4, 1)
        start = time.time()
        speech_decoder.train(config, flow_dir)
        result["train_minutes"] = (time.time() - start) / 60
    with open(os.path.join(flow_dir, "metrics.jsonl"), encoding="utf-8") as f:
        metrics = [json.loads(line) for line in f]
    result["curve"] = [
        {k: r[k] for k in ("step", "eval_loss", "eval_mel_l1") if k in r}
        for r in metrics
        if "eval_loss" in r
    ]

    # 2. Decode held-out tokens with the trained decoder (flow + Griffin-Lim).
    rows = _rows(os.path.join(args.demo, "tokens", "heldout.jsonl"))[: args.utterances]
    subset = os.path.join(args.workdir, "heldout_tokens.jsonl")
    with open(subset, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": r["id"], "tokens": r["tokens"]}) + "\n" for r in rows)
    wav_dir = os.path.join(args.workdir, "decoded")
    if args.skip_decode:
        ids = [r["id"] for r in rows if os.path.exists(os.path.join(wav_dir, f"{r['id']}.wav"))]
        decode_errors = len(rows) - len(ids)
    else:
        model = decoder_checkpoint.load_any(os.path.join(flow_dir, "decoder"))
        start = time.time()
        report = speech_decoding.decode_file(model, subset, wav_dir, noise="zeros")
        result["decode_seconds"] = time.time() - start
        ids = [r.id for r in report.results]
        decode_errors = len(report.errors)
    audio_of = {r["id"]: r["audio"] for r in _rows(held_manifest)}
    texts = {r["id"]: r["text"] for r in _rows(held_manifest)}

    # 3. Scores at 22050 Hz (reconstruction.py resamples to 16 kHz).
    originals = [mel_lib.load_audio(audio_of[i]) for i in ids]
    decoded = [mel_lib.load_audio(os.path.join(wav_dir, f"{i}.wav")) for i in ids]
    ceiling = [mel_lib.griffin_lim(mel_lib.log_mel(w)) for w in originals]
    sr = mel_lib.SAMPLE_RATE
    tok_ckpt = os.path.join(args.demo, "tokenizer")
    _, tok_model = speech_tokenization.load_model(tok_ckpt)
    judge = transcription.TokenTranscriber(tok_ckpt)
    refs = [texts[i] for i in ids]
    original_hyps = judge.transcribe([np.asarray(r["tokens"]) for r in rows if r["id"] in ids])
    original_hyps_audio = _asr(tok_model, judge, [_at16k(w) for w in originals])
    result["judge_on_original_audio"] = reconstruction.recon_error_rates(
        refs, original_hyps, original_hyps_audio
    )

    original_codes = [np.asarray(r["tokens"]) for r in rows if r["id"] in ids]
    # Chance level: each decoded utterance against the *next* utterance's original (same voices
    # and sentence style, other content).
    shifted = originals[1:] + originals[:1]
    shifted_codes = original_codes[1:] + original_codes[:1]
    systems = (
        ("trained_flow", decoded, originals, original_codes),
        ("griffin_lim_of_original_mel", ceiling, originals, original_codes),
        ("chance_trained_flow_vs_another_utterance", decoded, shifted, shifted_codes),
    )
    for name, wavs, refs_wav, refs_codes in systems:
        scores = reconstruction.score_corpus(refs_wav, wavs, sr)
        codes = speech_tokenization.tokenize_waveforms(tok_model, [_at16k(w) for w in wavs])
        same = sum(int(np.sum(c[: len(o)] == o[: len(c)])) for c, o in zip(codes, refs_codes))
        scores["retokenized_agreement"] = same / max(1, sum(len(o) for o in refs_codes))
        if name != "chance_trained_flow_vs_another_utterance":
            hyps = judge.transcribe(codes)
            scores.update(reconstruction.recon_error_rates(refs, original_hyps, hyps))
            scores["examples"] = [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:3]]
        result[name] = scores
    result["utterances"] = len(ids)
    result["decode_errors"] = decode_errors
    result["uptime_after"] = _uptime()
    out = os.path.join(args.workdir, "reconstruction.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
