"""Process-level crash safety: a real ``sluice worker`` fleet (subprocess), the maintenance loop (thread) and a
slow sink process. A SIGKILLed worker and a flushed Redis must lose no run and duplicate no attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from bench.support import SinkProcess
from scheduler.maintenance import MaintenanceContext, MaintenanceLoop
from shared.clock import utcnow
from shared.config import Settings
from shared.db.models import Run, RunEvent
from shared.messages.broker import make_broker
from shared.messages.enqueue import enqueue_runs
from shared.runs.creation import RunInputs, create_runs
from shared.runs.effects import Effects
from shared.runs.status import TERMINAL
from tests import factories
from tests.conftest import pg_url, redis_url

pytestmark = pytest.mark.slow

SLUICE = str(Path(sys.executable).parent / "sluice")
TERMINAL_VALUES = [s.value for s in TERMINAL]


class Fleet:
    """``sluice worker --processes 2`` plus the maintenance loop, against the test database and Redis DB."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], redis_client: redis_lib.Redis):
        env = {**os.environ, "DATABASE_URL": pg_url(), "REDIS_URL": redis_url(),
               "SLUICE_ALLOW_PRIVATE_ENDPOINTS": "true", "SLUICE_HEARTBEAT_INTERVAL_SECS": "1",
               "SLUICE_LOG_JSON": "false", "SLUICE_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen([SLUICE, "worker", "--processes", "2", "--threads", "8", "--queues",
                                      "sluice.runs"], env=env, start_new_session=True)
        maintenance_settings = settings.with_overrides(stale_after_secs=3, sweep_interval_secs=0.2)
        self.broker = make_broker(settings, client=redis_client)
        ctx = MaintenanceContext(settings=maintenance_settings, session_factory=session_factory,
                                 broker=self.broker, redis=redis_client)
        self.stop_event = threading.Event()
        self.maintenance = threading.Thread(target=MaintenanceLoop(ctx).run, args=(self.stop_event,), daemon=True)
        self.maintenance.start()

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        pids = []
        for pid in out:
            try:
                if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text():
                    pids.append(int(pid))
            except OSError:
                pass
        return pids

    def stop(self) -> None:
        self.stop_event.set()
        self.maintenance.join(timeout=10)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture()
def fleet(settings: Settings, session_factory: sessionmaker[Session],
          redis_client: redis_lib.Redis) -> Iterator[Fleet]:
    started = Fleet(settings, session_factory, redis_client)
    try:
        yield started
    finally:
        started.stop()


def _create_runs(session_factory: sessionmaker[Session], broker: object, url: str, n: int) -> str:
    with session_factory() as s:
        job = factories.make_job(s, endpoint_url=url, max_attempts=5, retry_strategy="fixed")
        effects = Effects()
        create_runs(s, job, [RunInputs(created_by="apikey:test") for _ in range(n)], now=utcnow(), effects=effects)
        s.commit()
        job_id = job.id
    enqueue_runs(broker, effects.enqueue)
    return job_id


def _count(session_factory: sessionmaker[Session], job_id: str, statuses: list[str]) -> int:
    with session_factory() as s:
        return int(s.execute(sa.select(sa.func.count()).where(Run.job_id == job_id, Run.status.in_(statuses)))
                   .scalar() or 0)


def _wait_all_terminal(session_factory: sessionmaker[Session], job_id: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _count(session_factory, job_id, TERMINAL_VALUES) < n:
        assert time.monotonic() < deadline, (
            f"only {_count(session_factory, job_id, TERMINAL_VALUES)} of {n} runs terminal")
        time.sleep(0.2)


def _assert_no_duplicates(session_factory: sessionmaker[Session], job_id: str,
                          hits: list[tuple[str, str, float]]) -> None:
    with session_factory() as s:
        runs = {r.id: r for r in s.execute(sa.select(Run).where(Run.job_id == job_id)).scalars()}
        starts = Counter((e.run_id, e.data["attempt"]) for e in s.execute(
            sa.select(RunEvent).where(RunEvent.run_id.in_(list(runs)), RunEvent.type == "attempt_started")).scalars())
    assert all(count == 1 for count in starts.values()), "an attempt was started twice"
    for run in runs.values():
        assert sorted(a for (rid, a) in starts if rid == run.id) == list(range(1, run.attempt + 1))
    endpoint = Counter((str(h[0]), str(h[1])) for h in hits if h[0] in runs)
    assert all(count == 1 for count in endpoint.values()), "the endpoint saw one (run, attempt) twice"


def test_sigkilled_worker_loses_no_run_and_duplicates_no_attempt(fleet: Fleet,
                                                                 session_factory: sessionmaker[Session]) -> None:
    sink = SinkProcess(delay_secs=0.5)
    try:
        job_id = _create_runs(session_factory, fleet.broker, sink.url, 200)
        deadline = time.monotonic() + 30
        while _count(session_factory, job_id, ["completed"]) < 40:
            assert time.monotonic() < deadline, "the fleet did not start working"
            time.sleep(0.1)
        victims = fleet.worker_pids()
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)

        _wait_all_terminal(session_factory, job_id, 200, timeout=60)
        assert _count(session_factory, job_id, ["completed"]) == 200
        assert _count(session_factory, job_id, ["executing"]) == 0
        hits = sink.records()
    finally:
        sink.stop()
    assert isinstance(hits, list)
    _assert_no_duplicates(session_factory, job_id, hits)
    with session_factory() as s:
        reaped = s.execute(sa.select(sa.func.count()).select_from(RunEvent).join(Run, Run.id == RunEvent.run_id)
                           .where(Run.job_id == job_id, RunEvent.type == "attempt_finished",
                                  RunEvent.data["error_class"].as_string() == "internal")).scalar()
    assert reaped and reaped >= 1, "the kill should have interrupted at least one attempt"


def test_flushed_redis_mid_backlog_still_completes_every_run(fleet: Fleet, session_factory: sessionmaker[Session],
                                                             redis_client: redis_lib.Redis) -> None:
    sink = SinkProcess(delay_secs=0.05)
    try:
        job_id = _create_runs(session_factory, fleet.broker, sink.url, 200)
        deadline = time.monotonic() + 30
        while _count(session_factory, job_id, ["completed"]) < 30:
            assert time.monotonic() < deadline, "the fleet did not start working"
            time.sleep(0.05)
        redis_client.flushdb()

        _wait_all_terminal(session_factory, job_id, 200, timeout=60)
        assert _count(session_factory, job_id, ["completed"]) == 200
        hits = sink.records()
    finally:
        sink.stop()
    assert isinstance(hits, list)
    _assert_no_duplicates(session_factory, job_id, hits)
