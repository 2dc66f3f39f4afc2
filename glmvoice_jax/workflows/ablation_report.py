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
    ("Recon CER", "reconstruction", "recon_cer", "{:.1%}"),
    ("Recon WER", "reconstruction", "recon_wer", "{:.1%}"),
    ("judge CER on originals", "reconstruction", "judge_original_cer", "{:.1%}"),
    ("PESQ wb", "reconstruction", "pesq_wb", "{:.2f}"),
    ("STOI", "reconstruction", "stoi", "{:.3f}"),
    ("MCD (dB)", "reconstruction", "mcd_db", "{:.2f}"),
    ("re-tok. agreement", "reconstruction", "retokenized_agreement", "{:.1%}"),
    ("decoder mel L1", "decoder", "eval_mel_l1", "{:.2f}"),
)
# glm4voice.md §3, the paper's Table 1 rows of GLM-4-Voice-Tokenizer by frame rate (Hz): whisper-
# large-v3 fine-tuned, LibriSpeech WER / AISHELL-1 CER in %, reconstruction of LibriSpeech through
# the released decoder (HiFT). Shown for reference only: other data, judges, decoders and
# quality measures (VisQOL / MOSNet where this sweep has PESQ / STOI / MCD). The 6.25 Hz ASR
# cells of the paper repeat its reconstruction cells, so they are left out (None).
PAPER_TABLE1 = {
    50.0: dict(bps=600, ls_clean_wer=1.85, ls_other_wer=3.78, aishell_cer=2.70, recon_wer=6.24,
               visqol=2.67, mosnet=3.38),
    25.0: dict(bps=300, ls_clean_wer=1.94, ls_other_wer=4.16, aishell_cer=2.86, recon_wer=6.80,
               visqol=2.60, mosnet=3.33),
    12.5: dict(bps=175, ls_clean_wer=2.10, ls_other_wer=4.90, aishell_cer=3.02, recon_wer=8.43,
               visqol=2.52, mosnet=3.39),
    6.25: dict(bps=100, ls_clean_wer=None, ls_other_wer=None, aishell_cer=None, recon_wer=14.41,
               visqol=2.34, mosnet=3.24),
}  # fmt: skip
# (title, ours: (stage, key, format) | paper: key, format) of the side-by-side Table 1.
TABLE1_OURS = (
    ("bps", "tokenizer", "bitrate_bps", "{:.0f}"),
    ("ASR CER", "tokenizer", "train_eval_cer", "{:.1%}"),
    ("Recon CER", "reconstruction", "recon_cer", "{:.1%}"),
    ("Recon WER", "reconstruction", "recon_wer", "{:.1%}"),
    ("PESQ wb", "reconstruction", "pesq_wb", "{:.2f}"),
    ("STOI", "reconstruction", "stoi", "{:.3f}"),
    ("MCD dB", "reconstruction", "mcd_db", "{:.2f}"),
)
TABLE1_PAPER = (
    ("paper bps", "bps", "{:d}"),
    ("paper LS-clean WER", "ls_clean_wer", "{:.2f}%"),
    ("paper LS-other WER", "ls_other_wer", "{:.2f}%"),
    ("paper Recon WER", "recon_wer", "{:.2f}%"),
    ("paper VisQOL", "visqol", "{:.2f}"),
    ("paper MOSNet", "mosnet", "{:.2f}"),
)
# Metrics plotted against the bitrate (report.png).
PLOTS = (
    ("tokenizer", "train_eval_cer", "tokenizer held-out CER"),
    ("lm_eval", "speech_nats_per_second", "LM speech loss (nats / s of audio)"),
    ("lm_eval", "story_cloze_s2s", "StoryCloze s2s accuracy"),
    ("lm_eval", "asr_cer", "CER of ASR / TTS through the LM"),
    ("reconstruction", "recon_cer", "Recon CER (judge) vs paper Recon WER"),
    ("reconstruction", "stoi", "reconstruction STOI / PESQ-WB"),
)


# A second series in a panel of PLOTS: (stage, key, label).
SECOND_SERIES = {
    "asr_cer": ("lm_eval", "tts_cer", "TTS"),
    "stoi": ("reconstruction", "pesq_wb", "PESQ-WB / 4.64"),
}


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


def table1(results: Sequence[dict]) -> str:
    """Table 1's columns side by side: this sweep's cell, then the paper's row at its frame rate."""
    head = ["cell", "frame rate (Hz)", *(c[0] for c in TABLE1_OURS), *(c[0] for c in TABLE1_PAPER)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(results, key=_bps):
        rate = _value(r, "tokenizer", "frame_rate_hz")
        paper = PAPER_TABLE1.get(float(rate), {}) if rate is not None else {}
        row = [r["cell"], _cell(rate, "{:g}")]
        row += [_cell(_value(r, stage, key), fmt) for _, stage, key, fmt in TABLE1_OURS]
        row += [_cell(paper.get(key), fmt) for _, key, fmt in TABLE1_PAPER]
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
        "## Table 1 side by side (glm4voice.md §3)",
        "",
        table1(results),
        "",
        _recon_note(config),
        "",
    ]
    files.write_text(paths["md"], "\n".join(md))
    paper = {f"{k:g}": v for k, v in PAPER_TABLE1.items()}
    files.write_json(
        paths["json"],
        {"cells": list(results), "sweep": config.to_dict(), "paper_table1": paper},
        default=str,
    )
    _plot(results, paths["png"])
    _tensorboard(workdir, results)
    return paths


def _recon_note(config: mlc.ConfigDict) -> str:
    dec = config.get("decoder")
    trained = (
        f"a speech decoder trained per cell on its own tokens ({dec.config}, {dec.steps} flow "
        "steps, the same in every cell, unless the cell names a decoder)"
        if dec is not None
        else "the decoder each cell names"
    )
    judge = config.evals.get("judge", "?")
    n = config.evals.get("reconstruction_utterances", "?")
    return (
        f"Reconstruction: the first {n} held-out utterances' tokens -> {trained} -> audio, "
        "scored against the original audio (evals/reconstruction.py: PESQ wide band, STOI, MCD "
        f"at 16 kHz). Recon CER/WER: one ASR judge for every cell ({judge}: a tokenizer's ASR "
        "head on the re-tokenized audio); 'judge CER on originals' is its CER on the original "
        "audio, the floor of Recon CER. Re-tok. agreement: the cell tokenizer's tokens of the "
        "decoded audio equal to the original ones. The paper's columns are LibriSpeech through "
        "the released decoder, other judges and measures (VisQOL, MOSNet): for reference, not "
        "comparable number for number."
    )


def _plot(results: Sequence[dict], path: str) -> None:
    import matplotlib  # lazy: matplotlib costs ~1 s to import; only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only the plot needs it

    ok = sorted((r for r in results if _value(r, "tokenizer", "bitrate_bps")), key=_bps)
    cols = 3
    rows = -(-len(PLOTS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (stage, key, title) in zip(axes.flat, PLOTS, strict=True):
        pts = [(_bps(r), _value(r, stage, key), r["cell"]) for r in ok]
        pts = [p for p in pts if p[1] is not None]
        second = SECOND_SERIES.get(key)
        if second:
            scale = 1 / 4.64 if key == "stoi" else 1.0  # PESQ-WB's top score, onto STOI's 0..1
            extra = [(_bps(r), _value(r, second[0], second[1])) for r in ok]
            extra = [(x, y * scale) for x, y in extra if y is not None]
            if extra:
                ax.plot(*zip(*extra, strict=True), "s--", label=second[2])
        if key == "recon_cer":
            paper = sorted((v["bps"], v["recon_wer"] / 100) for v in PAPER_TABLE1.values())
            ax.plot(*zip(*paper, strict=True), "^:", color="gray", label="paper Recon WER")
        if pts:
            label = {"asr_cer": "ASR", "stoi": "STOI", "recon_cer": "Recon CER (ours)"}.get(key)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
            for x, y, name in pts:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if ax.get_legend_handles_labels()[0]:
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
