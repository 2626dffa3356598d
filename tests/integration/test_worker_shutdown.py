"""Graceful shutdown of a real ``sluice worker`` fleet when its whole process group gets SIGTERM.

Process managers (honcho, foreman) signal the process group: every worker child gets SIGTERM directly and
then again from the supervisor. The second copy must not abandon in-flight attempts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.config import Settings
from shared.db.models import Run, RunEvent
from shared.messages.broker import make_broker
from shared.messages.enqueue import enqueue_runs
from tests import factories
from tests.conftest import pg_url, redis_url

SLUICE = str(Path(sys.executable).parent / "sluice")
CALL_SECS = 2.0


class SlowEndpoint:
    """Answers 200 after ``CALL_SECS``; ``called`` is set when a request arrives."""

    def __init__(self) -> None:
        called = self.called = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                called.set()
                time.sleep(CALL_SECS)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slow"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _worker_children(supervisor: int) -> list[int]:
    """The supervisor's ``spawn_main`` children (not multiprocessing's resource tracker)."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()
        pids = [int(pid) for pid in out if "spawn_main" in _cmdline(pid)]
        if len(pids) >= 2 or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


@pytest.fixture(name="slow_endpoint")
def slow_endpoint_fixture() -> Iterator[SlowEndpoint]:
    endpoint = SlowEndpoint()
    yield endpoint
    endpoint.server.shutdown()
    endpoint.server.server_close()


def test_group_sigterm_lets_in_flight_attempts_finish(settings: Settings, session_factory: sessionmaker[Session],
                                                       redis_client: redis_lib.Redis,
                                                       slow_endpoint: SlowEndpoint) -> None:
    with session_factory() as s:
        run = factories.make_run(s, factories.make_job(s, endpoint_url=slow_endpoint.url))
        s.commit()
    env = {**os.environ, "DATABASE_URL": pg_url(), "REDIS_URL": redis_url(),
           "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true", "SLUICE_LOG_JSON": "false", "SLUICE_LOG_LEVEL": "WARNING"}
    fleet = subprocess.Popen([SLUICE, "worker", "--processes", "2", "--threads", "2", "--queues", "sluice.runs"],
                             env=env, start_new_session=True)  # its own process group, as under honcho
    try:
        enqueue_runs(make_broker(settings, client=redis_client), [run.id])
        assert slow_endpoint.called.wait(60), "the attempt never started"
        children = _worker_children(fleet.pid)
        assert len(children) == 2
        os.killpg(fleet.pid, signal.SIGTERM)  # supervisor and children at once; the supervisor forwards it
        # Copies sent within microseconds may coalesce into one pending signal; make sure each child
        # really handles a second SIGTERM while its attempt is in flight.
        time.sleep(0.3)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # a child that already gave up fails below
                os.kill(pid, signal.SIGTERM)
        assert fleet.wait(30) == 0
    finally:
        if fleet.poll() is None:
            os.killpg(fleet.pid, signal.SIGKILL)
            fleet.wait(10)
    with session_factory() as s:
        done = s.get(Run, run.id)
        assert done is not None and (done.status, done.attempt) == ("completed", 1)
        finished = s.scalar(sa.select(sa.func.count()).select_from(RunEvent)
                            .where(RunEvent.run_id == run.id, RunEvent.type == "attempt_finished"))
    assert finished == 1
