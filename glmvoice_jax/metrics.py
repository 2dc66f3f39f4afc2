"""Metric output: WORKDIR/metrics.jsonl and TensorBoard event files (the console bar: progress.py).

WORKDIR may be a local path or a gs:// (any etils.epath) URI; ``MetricWriter`` says how the
files reach a remote one.

MFU = achieved model FLOP/s per device / peak FLOP/s of the device kind, with model FLOPs from
``GLMConfig.flops_per_token`` (6·N·D plus causal attention). Peaks are the bf16 dense figures
the anchors use (anchors.md §3.8); on CPU there is no meaningful vendor peak, so the config gives
one (``metrics.peak_flops_per_device``; bench/ measures this machine's practical peak).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from collections.abc import Mapping

import jax
from etils import epath

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


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URI (gs://, s3://, ...): a path that etils.epath, not the OS, opens."""
    return "://" in os.fspath(path)


def staging_dir(workdir: str) -> str:
    """Local directory where a remote workdir's log files are written before they are copied.

    $GLMVOICE_LOGDIR (default /tmp/glmvoice_logs) / the URI without its ``://``.
    """
    base = os.environ.get("GLMVOICE_LOGDIR", os.path.join(tempfile.gettempdir(), "glmvoice_logs"))
    return os.path.join(base, os.fspath(workdir).replace("://", "/").strip("/"))


class MetricWriter:
    """Writes one JSON object per logged step and the same scalars to TensorBoard.

    Only process 0 writes. On resume, lines for steps after the restored step (written by a run
    that was killed before its next checkpoint) are dropped, so the file reads as one history.

    A local ``workdir`` is written in place: WORKDIR/metrics.jsonl is appended to and the event
    files go to WORKDIR/tensorboard. A remote one (gs://, s3://: any etils.epath URI) is not:
    object stores cannot append, and tensorboardX writes gs:// only through google-cloud-storage,
    which is no dependency of ours. Both files are then written under ``staging_dir(workdir)``
    and copied whole to the workdir through etils.epath at most every ``sync_every_secs``, and
    at ``close()``. A killed run loses at most that interval of log lines (the checkpoint, not
    this file, is what a resume starts from). On resume, the remote metrics.jsonl is fetched
    first, so a new machine continues the same file.
    """

    def __init__(
        self,
        workdir: str,
        *,
        resume_step: int,
        enabled: bool = True,
        sync_every_secs: float = 60.0,
        local_dir: str | None = None,
    ):
        """Opens the writers.

        Args:
          workdir: where metrics.jsonl and tensorboard/ end up: a local path or an epath URI.
          resume_step: the step training resumes from; later lines are dropped.
          enabled: False on every process but 0 (then nothing is written).
          sync_every_secs: remote workdirs only: the shortest interval between two copies.
          local_dir: remote workdirs only: the staging directory (default ``staging_dir``).
        """
        self.enabled = enabled
        self.workdir = os.fspath(workdir)
        self.remote = is_remote(self.workdir)
        self.local_dir = (local_dir or staging_dir(self.workdir)) if self.remote else self.workdir
        self.path = os.path.join(self.local_dir, "metrics.jsonl")
        self.sync_every_secs = sync_every_secs
        self._tb = None
        self._synced: dict[str, int] = {}  # relative path -> bytes copied
        self._last_sync = time.monotonic()
        if not enabled:
            return
        os.makedirs(self.local_dir, exist_ok=True)
        if self.remote:
            remote_metrics = epath.Path(self.workdir) / "metrics.jsonl"
            if remote_metrics.exists():  # the remote copy is the history; the local may be stale
                with open(self.path, "wb") as f:
                    f.write(remote_metrics.read_bytes())
        self._truncate(resume_step)
        from tensorboardX import SummaryWriter  # lazy: its import costs ~0.3 s

        # The suffix keeps two runs that start in the same second (the name has the time in
        # seconds and the host) from overwriting each other's event file.
        self._tb = SummaryWriter(
            logdir=os.path.join(self.local_dir, "tensorboard"),
            flush_secs=10,
            filename_suffix=f".from_step_{resume_step}",
        )
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        if self.remote:
            self.sync()  # the truncated history, and a write check of the workdir up front

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
        if self.remote and time.monotonic() - self._last_sync >= self.sync_every_secs:
            self.sync()

    def sync(self) -> None:
        """Remote workdir: copies metrics.jsonl and the changed event files there now."""
        if not (self.enabled and self.remote):
            return
        self._file.flush()
        self._tb.flush()  # the file only: events still queued for its writer thread come later
        self._copy()

    def _copy(self) -> None:
        root = epath.Path(self.workdir)
        root.mkdir(parents=True, exist_ok=True)
        files = ["metrics.jsonl"]
        tb_dir = os.path.join(self.local_dir, "tensorboard")
        for dirpath, _, names in os.walk(tb_dir):
            files += [os.path.relpath(os.path.join(dirpath, n), self.local_dir) for n in names]
        for rel in sorted(files):
            src = os.path.join(self.local_dir, rel)
            size = os.path.getsize(src)
            if rel != "metrics.jsonl" and self._synced.get(rel) == size:
                continue  # an event file only grows: unchanged size, unchanged file
            dst = root.joinpath(*rel.split(os.sep))
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f:
                dst.write_bytes(f.read())  # one whole-object write: no append on object stores
            self._synced[rel] = size
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            # Close first: tensorboardX's close() drains its event queue, so the last copy to a
            # remote workdir holds every event (a flush() alone can leave some in the queue).
            self._tb.close()
            self._file.close()
            if self.remote:
                self._copy()


def plot_losses(workdir: str, out_png: str) -> str | None:
    """PNG of loss / text_loss / speech_loss against step from metrics.jsonl.

    Both paths may be local or etils.epath URIs (gs://...).
    """
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]  # evaluation rows (eval/...) have their own keys
    if not rows:
        return None
    import matplotlib  # lazy: matplotlib costs ~1 s to import; only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only the plot needs it

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    for key in ("loss", "text_loss", "speech_loss"):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    name = epath.Path(workdir).name if is_remote(workdir) else os.path.abspath(workdir)
    ax.set_title(os.path.basename(name))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    epath.Path(out_png).write_bytes(png.getvalue())
    return out_png
