"""Metric output: WORKDIR/metrics.jsonl, TensorBoard event files, a one-line console display.

MFU = achieved model FLOP/s per device / peak FLOP/s of the device kind, with model FLOPs from
``GLMConfig.flops_per_token`` (6·N·D plus causal attention). Peaks are the bf16 dense figures
the anchors use (anchors.md §3.8); on CPU there is no meaningful vendor peak, so the config gives
one (``metrics.peak_flops_per_device``; bench/ measures this machine's practical peak).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

import jax

# Dense bf16 peak FLOP/s per device (chip) by jax device_kind prefix.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989.5e12,
    "NVIDIA H200": 989.5e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(device: jax.Device, configured: float) -> float:
    """Peak FLOP/s of one device: the table for known kinds, else the configured number."""
    kind = getattr(device, "device_kind", "")
    for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
        if kind.startswith(prefix):
            return PEAK_FLOPS[prefix]
    return float(configured)


class MetricWriter:
    """Writes one JSON object per logged step and the same scalars to TensorBoard.

    Only process 0 writes. On resume, lines for steps after the restored step (written by a run
    that was killed before its next checkpoint) are dropped, so the file reads as one history.
    """

    def __init__(self, workdir: str, *, resume_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        self._truncate(resume_step)
        from tensorboardX import SummaryWriter  # lazy: its import costs ~0.3 s

        self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=10)
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())

    def _truncate(self, resume_step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= resume_step:
                    kept.append(line)
            except (ValueError, KeyError):
                continue  # a line cut by kill -9
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in scalars.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in scalars.items():
            if math.isfinite(float(v)):
                self._tb.add_scalar(k, float(v), global_step=int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


class Progress:
    """One console line, rewritten in place on a TTY: step, loss, throughput, ETA."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.total = total_steps
        self.start_step = start_step
        self.t0 = time.time()
        self.enabled = enabled
        self.tty = sys.stdout.isatty()

    def update(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        done = step - self.start_step
        elapsed = time.time() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        line = (
            f"step {step}/{self.total}  loss {scalars['loss']:.4f}  "
            f"text {scalars['text_loss']:.3f}  speech {scalars['speech_loss']:.3f}  "
            f"{scalars['tokens_per_sec']:,.0f} tok/s  mfu {100 * scalars['mfu']:.1f}%  "
            f"eta {_hms(eta)}"
        )
        if self.tty:
            sys.stdout.write("\r" + line.ljust(120))
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()


def _hms(secs: float) -> str:
    secs = int(max(secs, 0))
    return f"{secs // 3600:d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def plot_losses(workdir: str, out_png: str) -> str | None:
    """PNG of loss / text_loss / speech_loss against step from metrics.jsonl."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key in ("loss", "text_loss", "speech_loss"):
        ax.plot(steps, [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
