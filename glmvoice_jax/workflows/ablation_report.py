"""The bitrate-sweep report: ``report.md``, ``report.json``, ``report.png``, TensorBoard per cell.

Rewritten after every cell, so a running (or killed) sweep always has a report of what finished.
Rows are ordered by bitrate; cells that are invalid or failed keep their row with the error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import ml_collections as mlc

from glmvoice_jax import files

# (column title, stage, key, format) of the report table.
COLUMNS = (
    ("frame rate (Hz)", "tokenizer", "frame_rate_hz", "{:g}"),
    ("codebook", "tokenizer", "codebook_size", "{:d}"),
    ("bps", "tokenizer", "bitrate_bps", "{:.0f}"),
    ("tokenizer CER", "tokenizer", "train_eval_cer", "{:.1%}"),
    ("usage", "tokenize", "heldout_codebook_usage", "{:.0%}"),
    ("tok/s audio", "tokenize", "tokens_per_second", "{:.2f}"),
    ("LM speech nats/s", "lm_eval", "speech_nats_per_second", "{:.2f}"),
    ("LM speech nats/tok", "lm_eval", "speech_loss_per_token", "{:.3f}"),
    ("LM text nats/tok", "lm_eval", "text_loss_per_token", "{:.3f}"),
    ("StoryCloze s2s", "lm_eval", "story_cloze_s2s", "{:.1%}"),
    ("StoryCloze s2t", "lm_eval", "story_cloze_s2t", "{:.1%}"),
    ("LM ASR CER", "lm_eval", "asr_cer", "{:.1%}"),
    ("LM TTS CER", "lm_eval", "tts_cer", "{:.1%}"),
    ("resynth CER", "resynthesis", "resynthesis_cer", "{:.1%}"),
)
# Metrics plotted against the bitrate (report.png).
PLOTS = (
    ("tokenizer", "train_eval_cer", "tokenizer held-out CER"),
    ("lm_eval", "speech_nats_per_second", "LM speech loss (nats / s of audio)"),
    ("lm_eval", "story_cloze_s2s", "StoryCloze s2s accuracy"),
    ("lm_eval", "asr_cer", "CER of ASR / TTS through the LM"),
)


def _value(result: dict, stage: str, key: str):
    return result.get("stages", {}).get(stage, {}).get(key)


def _bps(result: dict) -> float:
    v = _value(result, "tokenizer", "bitrate_bps")
    return float(v) if v is not None else math.inf


def _cell(value, fmt: str) -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def table(results: Sequence[dict]) -> str:
    """The markdown table, one row per cell by bitrate."""
    head = ["cell", *(c[0] for c in COLUMNS), "wall (min)", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(results, key=_bps):
        row = [r["cell"]]
        row += [_cell(_value(r, stage, key), fmt) for _, stage, key, fmt in COLUMNS]
        row.append(f"{r.get('seconds', 0) / 60:.1f}")
        status = r["status"]
        if r.get("error"):
            status += f" at {r.get('failed_stage')}: {r['error'][:120]}"
        row.append(status.replace("|", "/"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write(workdir: str, results: Sequence[dict], config: mlc.ConfigDict) -> dict[str, str]:
    """Writes the report files; returns their paths."""
    lm_eval = config.evals
    paths = {k: os.path.join(workdir, f"report.{k}") for k in ("md", "json", "png")}
    budget = (
        f"Every LM: {config.lm.config}, {config.lm.steps} steps with the same tokens per step "
        "(same steps x tokens per cell, not the same FLOPs: vocabularies differ by codebook)."
    )
    md = [
        "# Tokenizer bitrate ablation",
        "",
        table(results),
        "",
        budget,
        f"LM ASR/TTS/loss evals on {lm_eval.heldout_utterances} held-out utterances; StoryCloze "
        f"on {lm_eval.story_cloze or 'the bundled demo set'} (chance = 50%). Speech nats/s = "
        "LM loss of held-out speech-only documents summed over speech tokens and <|end_of_audio|>, "
        "divided by their audio seconds. TTS CER = CER of the tokenizer's ASR head on the LM's "
        "speech tokens.",
        "",
    ]
    files.write_text(paths["md"], "\n".join(md))
    files.write_json(
        paths["json"], {"cells": list(results), "sweep": config.to_dict()}, default=str
    )
    _plot(results, paths["png"])
    _tensorboard(workdir, results)
    return paths


def _plot(results: Sequence[dict], path: str) -> None:
    import matplotlib  # lazy: matplotlib costs ~1 s to import; only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only the plot needs it

    ok = sorted((r for r in results if _value(r, "tokenizer", "bitrate_bps")), key=_bps)
    fig, axes = plt.subplots(1, len(PLOTS), figsize=(4.2 * len(PLOTS), 3.4))
    for ax, (stage, key, title) in zip(axes, PLOTS, strict=True):
        pts = [(_bps(r), _value(r, stage, key), r["cell"]) for r in ok]
        pts = [p for p in pts if p[1] is not None]
        if key == "asr_cer":
            tts = [(_bps(r), _value(r, "lm_eval", "tts_cer")) for r in ok]
            tts = [p for p in tts if p[1] is not None]
            if tts:
                ax.plot(*zip(*tts, strict=True), "s--", label="TTS")
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="ASR")
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if key == "asr_cer":
            ax.legend(fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokenizer bitrate (bps)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with files.atomic(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _tensorboard(workdir: str, results: Sequence[dict]) -> None:
    """Scalars of every finished cell under SWEEP/tensorboard/CELL (step = bitrate, rounded)."""
    # lazy: its import costs ~0.3 s; only the report's event files need it
    from tensorboardX import SummaryWriter

    for r in results:
        if r["status"] != "ok":
            continue
        step = int(round(_bps(r)))
        with SummaryWriter(os.path.join(workdir, "tensorboard", r["cell"])) as w:
            for _, stage, key, _ in COLUMNS:
                v = _value(r, stage, key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    w.add_scalar(f"ablation/{key}", float(v), step)
