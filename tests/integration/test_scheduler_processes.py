"""The scheduler as real processes, in real time (slow: one to two minutes in all, waiting for minute boundaries).

Run with ``SLUICE_TEST_DB_NAME=sluice_sched SLUICE_TEST_REDIS_DB=8 .venv/bin/pytest -m slow
tests/integration/test_scheduler_processes.py``. Jobs are written to the database directly (the jobs API
sets ``schedule_changed_at`` the same way). The reconcile interval is 2 s here to keep waits short.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.db.models import Job, Run
from tests.conftest import pg_url, redis_url
from tests.factories import make_job

ROOT = Path(__file__).resolve().parents[2]
SYNC_SECS = 2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def scheduler_command() -> list[str]:
    """``sluice scheduler`` when the full process exists, else the cron part alone."""
    if (ROOT / "scheduler" / "main.py").exists():
        return [str(ROOT / ".venv" / "bin" / "sluice"), "scheduler"]
    return [sys.executable, "-m", "scheduler.cron"]


class SchedulerProcess:
    def __init__(self, log_path: Path, grace_secs: int) -> None:
        self.log_path = log_path
        self.grace_secs = grace_secs
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "DATABASE_URL": pg_url(), "REDIS_URL": redis_url(), "SLUICE_LOG_JSON": "true",
               "SLUICE_SCHEDULER_SYNC_SECS": str(SYNC_SECS), "SLUICE_CRON_MISFIRE_GRACE_SECS": str(self.grace_secs),
               "SLUICE_METRICS_PORT": "0"}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(scheduler_command(), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.log_path.open("ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(e.get("event") == "cron scheduler started" for e in self.events(offset)):
                return
            assert self.proc.poll() is None, self.log_path.read_text()
            time.sleep(0.05)
        raise AssertionError(f"scheduler did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def events(self, offset: int = 0) -> list[dict[str, object]]:
        if not self.log_path.exists():
            return []
        found = []
        with self.log_path.open("rb") as handle:
            handle.seek(offset)
            for raw in handle:
                try:
                    found.append(json.loads(raw))
                except ValueError:
                    continue
        return found


@pytest.fixture()
def spawn(tmp_path: Path, settings) -> Iterator:  # type: ignore[no-untyped-def,type-arg]
    started: list[SchedulerProcess] = []

    def _spawn(name: str, grace_secs: int = 60) -> SchedulerProcess:
        process = SchedulerProcess(tmp_path / f"{name}.log", grace_secs)
        started.append(process)
        return process

    yield _spawn
    for process in started:
        process.stop()


def next_minute(after: datetime) -> datetime:
    return after.replace(second=0, microsecond=0) + timedelta(minutes=1)


def sleep_until(instant: datetime) -> None:
    delay = (instant - datetime.now(UTC)).total_seconds()
    if delay > 0:
        time.sleep(delay)


def cron_runs(session_factory, job_id: str) -> list[Run]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(sa.select(Run).where(Run.job_id == job_id).order_by(Run.scheduled_at)))


def set_job(session_factory, job_id: str, **values: object) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    with session_factory() as s:
        s.execute(sa.update(Job).where(Job.id == job_id).values(updated_at=now, schedule_changed_at=now, **values))
        s.commit()


def test_two_replicas_one_run_per_tick_and_changes_apply_within_a_sync(session_factory, spawn) -> None:
    with session_factory() as s:
        steady = make_job(s, cron="* * * * *")
        patched = make_job(s, cron="0 0 1 1 *")
        toggled = make_job(s, cron="* * * * *")
        s.commit()
    replicas = [spawn("a"), spawn("b")]
    for replica in replicas:
        replica.start()
    # Both replicas have scheduled the three jobs as they were; the changes must reach them within a sync,
    # made where no tick can fall before that sync: not just before a minute boundary.
    boundary = next_minute(datetime.now(UTC))
    if boundary - datetime.now(UTC) < timedelta(seconds=4 * SYNC_SECS):
        sleep_until(boundary + timedelta(seconds=1))
    set_job(session_factory, patched.id, cron="* * * * *")  # a PATCH of cron
    set_job(session_factory, toggled.id, enabled=False)
    changed = datetime.now(UTC)
    # One tick, at least three syncs after the change (a job enabled again is added like a new one, and a
    # second tick fires like the first: test_scheduler_firing covers both in-process).
    tick = next_minute(changed + timedelta(seconds=3 * SYNC_SECS))
    sleep_until(tick + timedelta(seconds=5))

    runs = [r for r in cron_runs(session_factory, steady.id) if r.scheduled_at >= tick]
    assert [r.scheduled_at for r in runs] == [tick]
    assert runs[0].created_at - runs[0].scheduled_at < timedelta(seconds=2)
    every = cron_runs(session_factory, steady.id)
    assert len({r.scheduled_at for r in every}) == len(every)  # never two runs for one tick
    for run in every:
        assert (run.triggered_by, run.created_by, run.payload) == ("cron", "system:cron", "{}")
        assert run.scheduled_at.second == 0 and run.scheduled_at.microsecond == 0
        assert run.idempotency_key == f"cron:{steady.id}:{run.scheduled_at:%Y-%m-%dT%H:%M:%SZ}"
    # Both replicas fired; each tick's run was created by exactly one of them.
    created = [e for r in replicas for e in r.events()
               if e.get("event") == "cron run created" and e.get("job_id") == steady.id]
    assert sorted(str(e["tick"]) for e in created) == sorted(
        f"{r.scheduled_at:%Y-%m-%dT%H:%M:%S}.000000Z" for r in every)

    assert not [e for r in replicas for e in r.events() if e.get("level") == "error"]

    assert [r.scheduled_at for r in cron_runs(session_factory, patched.id)] == [tick]
    assert [r.scheduled_at for r in cron_runs(session_factory, toggled.id) if r.scheduled_at > changed] == []


def test_a_start_within_the_grace_catches_up_once_and_beyond_it_skips(session_factory, spawn) -> None:
    """Whether a missed tick fires is decided by the process that starts after it, by its own grace: one
    started beyond its grace skips the tick, one started within its grace makes the run, once."""
    # The tick that was missed: the last minute boundary when it is recent enough for both processes to
    # start well within the prompt one's grace, else the next one. The job predates it, so it counts as missed.
    now = datetime.now(UTC)
    tick = now.replace(second=0, microsecond=0)
    if now - tick > timedelta(seconds=30):
        tick = next_minute(now)
    with session_factory() as s:
        job = make_job(s, cron="* * * * *", now=tick - timedelta(seconds=1))
        s.commit()
    late, prompt = spawn("late", grace_secs=5), spawn("prompt", grace_secs=90)
    sleep_until(tick + timedelta(seconds=6))
    late.start()  # ready a second or so later: the tick is beyond its 5 s grace
    skipped = [e for e in late.events() if e.get("event") == "missed cron tick skipped: older than the misfire grace"
               and e.get("job_id") == job.id]
    assert [e["tick"] for e in skipped] == [f"{tick:%Y-%m-%dT%H:%M:%S}.000000Z"]
    assert cron_runs(session_factory, job.id) == []

    started = datetime.now(UTC)
    prompt.start()  # within its 90 s grace
    deadline = time.monotonic() + 3
    while not (caught := cron_runs(session_factory, job.id)):
        assert time.monotonic() < deadline, "no catch-up run"
        time.sleep(0.1)
    assert [r.scheduled_at for r in caught] == [tick]
    assert caught[0].created_at > started  # made by the process started within its grace
    # Logged once the run is committed: it may reach the log a moment after the run is visible.
    while not any(e.get("event") == "cron run created" and e.get("catch_up") is True for e in prompt.events()):
        assert time.monotonic() < deadline + 2, f"no catch-up logged: {prompt.events()}"
        time.sleep(0.1)
    assert not [e for p in (late, prompt) for e in p.events() if e.get("level") == "error"]
