"""Worker shutdown signals: a repeated SIGTERM (process group + supervisor) must not drop in-flight attempts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A stand-in worker process: installs the real handlers, then "finishes an in-flight attempt" (0.8 s)
# after the stop request and exits 0 — unless a handler force-exits it first (exit code 1).
CHILD = """
import signal, sys, time
from worker.main import worker_stop_signals
signals = worker_stop_signals((signal.SIGTERM, signal.SIGINT))
print("ready", flush=True)
while not signals.wait(0.05):
    pass
time.sleep(0.8)
sys.exit(0)
"""


def _start() -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def test_second_sigterm_keeps_the_graceful_stop() -> None:
    child = _start()
    child.send_signal(signal.SIGTERM)  # from the process group
    time.sleep(0.1)
    child.send_signal(signal.SIGTERM)  # forwarded by the supervisor
    assert child.wait(timeout=10) == 0


def test_sigint_or_sigquit_while_stopping_exits_at_once() -> None:
    for force in (signal.SIGINT, signal.SIGQUIT):
        child = _start()
        child.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        child.send_signal(force)
        assert child.wait(timeout=10) == 1
