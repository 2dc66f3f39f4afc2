"""SIGTERM during glmvoice-train's start-up ends the process even inside a callback (issue 17).

A SystemExit raised by a signal handler is swallowed when the signal lands inside a callback
(JAX's XLA gc callback, a ``__del__``): Python prints "Exception ignored in ..." with a
traceback and the run went on, compiled and trained (found by tests/faults/case_table.py). The
handler now ends the process itself. The e2e start-up case is tests/faults/cli_test.py.
"""

import subprocess
import sys

_SCRIPT = """
import os, signal, sys, time
from glmvoice_jax.cli import train
signal.signal(signal.SIGTERM, train._stop_during_startup)

class Callback:
    def __del__(self):  # as JAX's gc callback: the signal is handled inside it
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100000):
            pass

c = Callback()
del c
time.sleep(0.2)
print("still running")
sys.exit(3)
"""


def test_sigterm_inside_a_callback_still_exits_zero():
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "still running" not in proc.stdout
    assert "SIGTERM during start-up" in proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
