"""Faults suite, whole console scripts (issue 17): a user error is one or two lines, exit 1.

Each case runs a real ``glmvoice-*`` process (slow: a JAX import each), so the suite is e2e.
It counts raw tracebacks: a user error must never print one (unless GLMVOICE_DEBUG=1).
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

_TRAIN = [sys.executable, "-c", "from glmvoice_jax.cli.train import run; run()"]
_DEMO = "configs/demo_tiny.py:corpus=synthetic"


_CASE_NAMES = (
    "glob matches nothing",
    "negative batch",
    "init_from missing",
    "unknown key",
    "config file missing",
    "unwritable workdir",
)


def _cases(tmp):
    blocker = tmp / "a_file"  # a workdir below a plain file cannot be made (even by root)
    blocker.write_text("x")
    corpus = f"--workdir={tmp / 'run'}"  # no corpus there: every glob matches nothing
    return {
        "glob matches nothing": (_TRAIN + [f"--config={_DEMO}", corpus], "matches no"),
        "negative batch": (
            _TRAIN + [f"--config={_DEMO}", corpus, "--config.input.global_batch_size=-4"],
            "global_batch_size",
        ),
        "init_from missing": (
            _TRAIN + [f"--config={_DEMO}", corpus, f"--config.init_from={tmp / 'nope'}"],
            "nope",
        ),
        "unknown key": (_TRAIN + [f"--config={_DEMO}", corpus, "--config.nope=1"], "nope"),
        "config file missing": (_TRAIN + [f"--config={tmp / 'x.py'}", corpus], "x.py"),
        "unwritable workdir": (
            _TRAIN + [f"--config={_DEMO}", f"--workdir={blocker / 'run'}"],
            "a_file",
        ),
    }


# The trainer opens its workdir's CheckpointManager before it resolves init_from; the error exits
# while Orbax's cleanup thread runs, which logs a traceback at shutdown (trainers/lm.py, owned by
# another agent until phase 2: close the manager on the way out). Strict: fails once fixed.
_KNOWN: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=_KNOWN[n]))
        if n in _KNOWN
        else n
        for n in _CASE_NAMES
    ],
)
def test_cli_user_error_is_one_line_without_traceback(tmp_path, name):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GLMVOICE_DEBUG": "0"}
    cmd, needle = _cases(tmp_path)[name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    err = proc.stderr
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert proc.returncode == 1, f"{name}: rc {proc.returncode}\n{err[-3000:]}"
    assert lines and needle in lines[-1], f"{name}: {err[-3000:]}"
    assert "Traceback (most recent call last)" not in err, f"{name}: {err[-3000:]}"


def test_sigterm_during_startup_exits_zero_with_a_message(tmp_path):
    import signal
    import time

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = _TRAIN + [f"--config={_DEMO}", f"--workdir={tmp_path / 'run'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1.0)  # inside the imports / config parsing, long before the first step
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM during start-up" in err and "Traceback" not in err, err[-3000:]
