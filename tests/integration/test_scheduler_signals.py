"""A burst of stop signals stops the scheduler once and cleanly.

A killed ``sluice dev``'s scheduler once received three SIGTERMs within 14 ms and never exited: its handler
set the stop event, and a handler runs on the main thread between any two bytecodes, including while that
thread holds the event's own lock inside ``wait``. The handler now only records the signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import pg_url, redis_url

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-c", "import sys; from shared.cli.roles import run_scheduler as entry; "
                                 "sys.exit(entry(sys.argv[1:]))"]


def _events(log_path: Path) -> list[str]:
    found = []
    for raw in log_path.read_bytes().splitlines():
        try:
            found.append(str(json.loads(raw).get("event")))
        except ValueError:
            continue
    return found


def test_a_burst_of_stop_signals_stops_the_scheduler_once(tmp_path: Path) -> None:
    log_path = tmp_path / "scheduler.log"
    env = {**os.environ, "DATABASE_URL": pg_url(), "REDIS_URL": redis_url(), "SLUICE_LOG_JSON": "true",
           "SLUICE_METRICS_PORT": "0"}
    with log_path.open("ab") as log:
        process = subprocess.Popen(COMMAND, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while "scheduler started" not in _events(log_path):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        for _ in range(5):
            process.send_signal(signal.SIGTERM)
            time.sleep(0.003)
        assert process.wait(15) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _events(log_path).count("stopping") == 1, log_path.read_text()
