"""The sweeper and maintenance loop (CONTRACT §5.1, §5.10, §5.11): promotion, expiry, lost messages."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from scheduler.maintenance import MaintenanceContext, MaintenanceLoop, default_tasks
from scheduler.sweeps import expire_unstarted, message_deficit, promote_due_delayed, seconds_until_next_expiry
from shared.clock import utcnow
from shared.db.models import Run, RunEvent
from shared.messages.broker import make_broker
from shared.runs.effects import Effects
from shared.runs.transitions import EXPIRED_ERROR
from tests.factories import make_dependency, make_job, make_run

MSGS = "dramatiq:sluice.runs.msgs"
QUEUE = "dramatiq:sluice.runs"


@pytest.fixture()
def broker(settings, redis_client):
    return make_broker(settings, client=redis_client)


@pytest.fixture()
def loop(settings, session_factory, broker, redis_client):
    """The maintenance loop running in a thread, as ``sluice scheduler`` runs it, sweeping every second: these
    tests write runs behind the API's back (nobody announces them), so only the periodic sweep finds them."""
    ctx = MaintenanceContext(settings=settings.with_overrides(sweep_interval_secs=1.0), session_factory=session_factory,
                             broker=broker, redis=redis_client)
    stop = threading.Event()
    thread = threading.Thread(target=MaintenanceLoop(ctx, default_tasks(ctx.settings)).run, args=(stop,))
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def wait_for(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def status_of(session_factory, run_id):
    with session_factory() as s:
        return s.get(Run, run_id).status


def test_promote_due_delayed_batch(session):
    job = make_job(session)
    now = utcnow()
    due = [make_run(session, job, status="delayed", due_at=now - timedelta(seconds=i)) for i in range(3)]
    later = make_run(session, job, status="delayed", due_at=now + timedelta(seconds=30))
    effects = Effects()
    assert promote_due_delayed(session, now, effects) == 3
    session.expire_all()
    assert sorted(effects.enqueue) == sorted(r.id for r in due)
    assert {session.get(Run, r.id).status for r in due} == {"queued"}
    assert session.get(Run, due[0].id).queued_at == now and session.get(Run, due[0].id).due_at is None
    assert session.get(Run, later.id).status == "delayed"
    events = session.scalars(sa.select(RunEvent).where(RunEvent.run_id == due[1].id)).all()
    assert [e.data for e in events] == [{"from": "delayed", "to": "queued"}]


def _rows_filtered_out(session, call) -> int:
    """Rows the index scans of the queries ``call`` sends read and then threw away (index scans forced)."""
    sent: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    connection = session.connection()
    sa.event.listen(connection, "before_cursor_execute", capture)
    try:
        call()
    finally:
        sa.event.remove(connection, "before_cursor_execute", capture)
    connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
    connection.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
    removed = 0
    for statement, parameters in sent:
        plan = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters).scalar()
        nodes = [plan[0]["Plan"]]
        while nodes:
            node = nodes.pop()
            removed += node.get("Rows Removed by Filter", 0)
            nodes += node.get("Plans", [])
    return removed


def test_the_expiry_sweep_never_reads_runs_that_can_no_longer_expire(session):
    """Expired (and other finished, never-started) runs keep their ``expires_at``: the expiry index must not
    hold them, or every sweep would read all of them again until retention deletes them."""
    job = make_job(session)
    long_ago = utcnow() - timedelta(days=1)
    for _ in range(50):
        make_run(session, job, status="expired", expires_at=long_ago)
        make_run(session, job, status="canceled", expires_at=long_ago)
    now = utcnow()
    make_run(session, job, status="queued", expires_at=now + timedelta(minutes=5))
    assert _rows_filtered_out(session, lambda: seconds_until_next_expiry(session, now)) == 0
    assert _rows_filtered_out(session, lambda: expire_unstarted(session, now, Effects())) == 0


def test_expire_unstarted_only(session):
    job = make_job(session)
    up = make_job(session)
    make_dependency(session, up, job, condition="failed")  # `up` waits for `job` to fail (expired counts)
    waiting = make_run(session, up, status="waiting")
    now = utcnow()
    past = now - timedelta(seconds=1)
    queued = make_run(session, job, status="queued", expires_at=past)
    delayed = make_run(session, job, status="delayed", expires_at=past, due_at=now + timedelta(hours=1))
    started = make_run(session, job, status="delayed", attempt=1, started_at=past, expires_at=past)
    fresh = make_run(session, job, status="queued", expires_at=now + timedelta(seconds=5))
    effects = Effects()
    assert expire_unstarted(session, now, effects) == 2
    session.expire_all()
    for run in (queued, delayed):
        stored = session.get(Run, run.id)
        assert stored.status == "expired" and stored.error == EXPIRED_ERROR and stored.finished_at == now
    assert session.get(Run, started.id).status == "delayed"
    assert session.get(Run, fresh.id).status == "queued"
    assert session.get(Run, waiting.id).status == "queued"  # released by the expiry


def test_deficit_counts_tokens_not_ids(session):
    job = make_job(session)
    off = make_job(session, enabled=False)
    old = utcnow() - timedelta(seconds=10)
    ready = [make_run(session, job, status="queued", queued_at=old + timedelta(seconds=i)) for i in range(4)]
    make_run(session, job, status="queued", queued_at=utcnow())  # within the grace period
    make_run(session, job, status="queued", queued_at=old, held_at=old)  # held
    make_run(session, off, status="queued", queued_at=old)  # job disabled
    make_run(session, job, status="executing", attempt=1)
    now = utcnow()
    assert message_deficit(session, now, pending=0) == (4, [r.id for r in ready])
    assert message_deficit(session, now, pending=1) == (4, [r.id for r in ready])  # the executing run's
    assert message_deficit(session, now, pending=3)[0] == 2
    assert message_deficit(session, now, pending=5) == (0, [])


def test_restores_deleted_message_and_promotes_within_2s(client, auth, session, session_factory, redis_client,
                                                          loop):
    make_job(session, slug="s")
    session.commit()
    headers = {**auth, "Content-Type": "application/json"}
    queued = client.post("/v1/jobs/s/trigger", data="{}", headers=headers).get_json()
    assert redis_client.hlen(MSGS) == 1
    redis_client.delete(MSGS, QUEUE)  # Redis lost it
    assert wait_for(lambda: redis_client.hlen(MSGS) == 1, timeout=4.5)
    message = json.loads(next(iter(redis_client.hvals(MSGS))))
    assert message["args"] == [queued["id"]] and message["actor_name"] == "dispatch_run"
    time.sleep(2.5)
    assert redis_client.hlen(MSGS) == 1  # no duplicate while the token exists

    delayed = client.post("/v1/jobs/s/trigger", data=json.dumps({"delay_secs": 1}), headers=headers).get_json()
    assert delayed["status"] == "delayed" and redis_client.hlen(MSGS) == 1
    started = time.monotonic()
    assert wait_for(lambda: status_of(session_factory, delayed["id"]) == "queued", timeout=4)
    assert time.monotonic() - started <= 1 + 2 + 0.2  # due after 1 s, promoted within 2 s
    assert wait_for(lambda: redis_client.hlen(MSGS) == 2)


def test_loop_expires_runs(client, auth, session, session_factory, loop):
    job = make_job(session)
    run = make_run(session, job, status="queued", expires_at=utcnow() + timedelta(seconds=0.5))
    session.commit()
    assert wait_for(lambda: status_of(session_factory, run.id) == "expired", timeout=3)


def test_failing_task_does_not_stop_others(settings, session_factory, broker, redis_client, session):
    calls = []

    def boom(ctx, now):
        raise RuntimeError("broken")

    def count(ctx, now):
        calls.append(now)
        return 0

    from scheduler.maintenance import PeriodicTask

    ctx = MaintenanceContext(settings=settings, session_factory=session_factory, broker=broker, redis=redis_client)
    loop = MaintenanceLoop(ctx, [PeriodicTask("boom", 0.01, boom), PeriodicTask("count", 0.01, count)])
    loop.run_due()
    time.sleep(0.02)
    loop.run_due()
    assert len(calls) == 2


def test_scheduler_process_stops_on_sigterm(settings):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "SLUICE_METRICS_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli.main", "scheduler"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # started: its signal handlers are in place
            if "scheduler started" in line:
                break
        else:
            raise AssertionError(f"the scheduler exited before starting: {proc.wait()}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_loop_wakes_at_the_next_due_time(session, session_factory, loop):
    """Promotion follows the earliest due_at, not a 1 s poll: once the loop knows a delayed run, it wakes
    when that run falls due (rate-limited runs start when their window has room, §5.9)."""
    job = make_job(session, slug="soon")
    first_due = utcnow() + timedelta(seconds=1.2)
    second_due = first_due + timedelta(seconds=0.5)
    first = make_run(session, job, status="delayed", scheduled_at=first_due, due_at=first_due)
    second = make_run(session, job, status="delayed", scheduled_at=second_due, due_at=second_due)
    session.commit()
    assert wait_for(lambda: status_of(session_factory, second.id) == "queued", timeout=4)
    with session_factory() as s:
        first_at, second_at = s.get(Run, first.id).queued_at, s.get(Run, second.id).queued_at
    assert first_at >= first_due and second_at >= second_due
    assert (second_at - second_due).total_seconds() < 0.3  # a 1 s poll would give up to 1 s


def test_an_idle_loop_sleeps_until_an_announced_due_time(client, auth, session, session_factory, settings, broker,
                                                         redis_client):
    """Default settings (a 5 s safety-net sweep): idle, no task runs again before it is due; a delayed run
    triggered through the API is announced, and promoted when due, not at the next sweep."""
    runs: dict[str, int] = {}

    def counted(task):
        def run(ctx, now):
            runs[task.name] = runs.get(task.name, 0) + 1
            return task.run(ctx, now)
        return dataclasses.replace(task, run=run)

    make_job(session, slug="s")
    session.commit()
    ctx = MaintenanceContext(settings=settings, session_factory=session_factory, broker=broker, redis=redis_client)
    stop = threading.Event()
    thread = threading.Thread(target=MaintenanceLoop(ctx, [counted(t) for t in default_tasks(settings)]).run,
                              args=(stop,))
    thread.start()
    try:
        time.sleep(2.0)
        assert set(runs.values()) == {1}  # each task once, at start; then asleep (a 1 s poll: twice more)
        headers = {**auth, "Content-Type": "application/json"}
        delayed = client.post("/v1/jobs/s/trigger", data=json.dumps({"delay_secs": 1}), headers=headers).get_json()
        due = datetime.fromisoformat(delayed["scheduled_at"].replace("Z", "+00:00"))
        assert wait_for(lambda: status_of(session_factory, delayed["id"]) == "queued", timeout=4)
        with session_factory() as s:
            queued_at = s.get(Run, delayed["id"]).queued_at
        assert timedelta(0) <= queued_at - due < timedelta(seconds=0.5)  # the next sweep would be ~3 s later
    finally:
        stop.set()
        thread.join(timeout=10)
