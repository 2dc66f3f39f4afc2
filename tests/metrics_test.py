"""MetricWriter and plot_losses on a local workdir and on a gs:// workdir.

The gs:// tests go through the real etils.epath path; only the network is replaced (the
``fake_gcs`` fixture of tests/conftest.py).
"""

import json
import os

from etils import epath

from glmvoice_jax import metrics


def _scalars(step):
    return {"loss": 10.0 - step, "text_loss": 5.0, "speech_loss": 4.0, "mfu": float("nan")}


def _steps(text):
    return [json.loads(line)["step"] for line in text.splitlines()]


def _event_files(root):
    tb = epath.Path(root) / "tensorboard"
    return [p for p in tb.iterdir() if p.name.startswith("events.out.tfevents")]


def test_local_workdir_writes_in_place_and_truncates_on_resume(tmp_path):
    wd = str(tmp_path / "run")
    w = metrics.MetricWriter(wd, resume_step=0)
    for step in (1, 2, 3):
        w.write(step, _scalars(step))
    w.close()
    assert w.local_dir == wd and not w.remote
    assert _steps((tmp_path / "run" / "metrics.jsonl").read_text()) == [1, 2, 3]
    events = _event_files(wd)
    assert len(events) == 1 and b"loss" in events[0].read_bytes()

    w = metrics.MetricWriter(wd, resume_step=2)  # killed after a checkpoint at step 2
    w.write(3, _scalars(3))
    w.close()
    assert _steps((tmp_path / "run" / "metrics.jsonl").read_text()) == [1, 2, 3]
    assert metrics.plot_losses(wd, os.path.join(wd, "loss.png"))
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_gcs_workdir_through_epath(fake_gcs, tmp_path):
    wd = "gs://bucket/runs/tok"
    w = metrics.MetricWriter(wd, resume_step=0, sync_every_secs=0, local_dir=str(tmp_path / "a"))
    w.write(1, _scalars(1))
    remote = epath.Path(wd)
    assert _steps((remote / "metrics.jsonl").read_text()) == [1]  # synced on write
    w.write(2, _scalars(2))
    w.write(3, _scalars(3))
    w.close()
    assert _steps((remote / "metrics.jsonl").read_text()) == [1, 2, 3]
    (event,) = _event_files(wd)
    local_event = tmp_path / "a" / "tensorboard" / event.name
    assert event.read_bytes() == local_event.read_bytes() and b"loss" in event.read_bytes()

    # Resume on another machine (empty staging directory) after a checkpoint at step 2.
    w = metrics.MetricWriter(wd, resume_step=2, sync_every_secs=0, local_dir=str(tmp_path / "b"))
    assert _steps((remote / "metrics.jsonl").read_text()) == [1, 2]
    w.write(3, _scalars(3))
    w.close()
    assert _steps((remote / "metrics.jsonl").read_text()) == [1, 2, 3]
    assert len(_event_files(wd)) == 2  # one event file per run, as TensorBoard expects

    png = metrics.plot_losses(wd, wd + "/loss.png")
    assert png == wd + "/loss.png" and (remote / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_gcs_sync_is_throttled_and_close_flushes(fake_gcs, tmp_path):
    wd = "gs://bucket/run"
    w = metrics.MetricWriter(wd, resume_step=0, sync_every_secs=3600, local_dir=str(tmp_path / "s"))
    for step in (1, 2):
        w.write(step, _scalars(step))
    assert (epath.Path(wd) / "metrics.jsonl").read_text() == ""  # only the opening sync so far
    w.close()
    assert _steps((epath.Path(wd) / "metrics.jsonl").read_text()) == [1, 2]


def test_disabled_writer_writes_nothing(fake_gcs, tmp_path):
    w = metrics.MetricWriter("gs://bucket/other", resume_step=0, enabled=False)
    w.write(1, _scalars(1))
    w.close()
    assert not epath.Path("gs://bucket/other").exists()
