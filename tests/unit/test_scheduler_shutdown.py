"""The scheduler's shutdown is bounded: a service thread stuck in a call cannot keep the process alive (a
scheduler whose ``sluice dev`` was killed gets one SIGTERM and nothing after it)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The scheduler's own shutdown guard, armed the way ``main`` arms it once its stop event is set, then a
# non-daemon thread that never returns (a call that hangs): the interpreter alone would wait for it forever.
CHILD = """
import threading
from scheduler.main import _exit_after
threading.Thread(target=threading.Event().wait, name="stuck").start()
_exit_after(0.5)
"""


def test_a_stuck_thread_cannot_keep_the_scheduler_alive() -> None:
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert time.monotonic() - began < 10
    assert "scheduler did not stop in time; exiting" in result.stderr
    assert 'Thread 0x' in result.stderr and "in wait" in result.stderr  # where the stuck thread was
