"""Cron firing and reconciliation against real PostgreSQL and Redis, with explicit instants (no waiting).

Real-time, multi-process behaviour is in ``test_scheduler_processes.py`` (slow).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler

from scheduler.cron import EXECUTOR, TickExecutor
from scheduler.fire import TickFiring, TickRequest, fire_tick
from scheduler.sync import ScheduleSync, load_last_cron_ticks
from shared.db.models import Job, Run, RunEvent
from shared.messages.broker import make_broker
from shared.messages.queue_state import ready_messages
from shared.runs.effects import Effects
from shared.schedules.cron import tick_key
from shared.triggers.cron import create_cron_runs
from tests.factories import make_dependency, make_job, make_run

TICK = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
BEFORE = TICK - timedelta(days=1)


@pytest.fixture()
def broker(settings, redis_client):  # type: ignore[no-untyped-def]
    return make_broker(settings, client=redis_client)


def _clock(at: datetime):  # type: ignore[no-untyped-def]
    return lambda: at


def _runs(session_factory) -> list[Run]:  # type: ignore[no-untyped-def]
    with session_factory() as s:
        return list(s.scalars(sa.select(Run).order_by(Run.job_id)))


def test_cron_runs_carry_the_contract_fields_and_a_tick_has_one_run(session_factory, broker) -> None:
    with session_factory() as s:
        job = make_job(s, cron="0 9 * * *", tags={"team": "a"}, default_run_metadata={"k": "v"},
                       run_ttl_secs=600, now=BEFORE)
        s.commit()
        effects = Effects()
        rows = create_cron_runs(s, [job], TICK, TICK + timedelta(seconds=1), effects)
        again = create_cron_runs(s, [job], TICK, TICK + timedelta(seconds=2), Effects())
        s.commit()
    assert len(rows) == 1 and again == []
    assert effects.enqueue == [rows[0]["id"]]
    run = _runs(session_factory)[0]
    assert (run.payload, run.tags, run.run_metadata, run.priority) == ("{}", {"team": "a"}, {"k": "v"}, 0)
    assert (run.triggered_by, run.created_by, run.status) == ("cron", "system:cron", "queued")
    assert run.scheduled_at == TICK
    assert run.idempotency_key == f"cron:{job.id}:2030-01-07T09:00:00Z" == tick_key(job.id, TICK)
    assert run.expires_at == TICK + timedelta(seconds=600)  # §5.10: tick + run_ttl_secs
    with session_factory() as s:
        events = list(s.scalars(sa.select(RunEvent).where(RunEvent.run_id == run.id)))
    assert [(e.type, e.data) for e in events] == [("state_change", {"from": None, "to": "queued"})]


def test_dependencies_gate_cron_runs(session_factory, broker) -> None:
    with session_factory() as s:
        upstream = make_job(s, now=BEFORE)
        gated = make_job(s, cron="0 9 * * *", now=BEFORE)
        free = make_job(s, cron="0 9 * * *", now=BEFORE)
        make_dependency(s, gated, upstream, now=BEFORE)
        s.commit()
        effects = Effects()
        rows = create_cron_runs(s, [gated, free], TICK, TICK, effects)
        s.commit()
    status = {row["job_id"]: row["status"] for row in rows}
    assert status == {gated.id: "waiting", free.id: "queued"}
    assert effects.enqueue == [row["id"] for row in rows if row["job_id"] == free.id]


def test_fire_tick_creates_enqueues_and_skips_what_the_job_no_longer_wants(session_factory, broker) -> None:
    with session_factory() as s:
        wanted = [make_job(s, cron="0 9 * * *", now=BEFORE) for _ in range(3)]
        disabled = make_job(s, cron="0 9 * * *", enabled=False, now=BEFORE)
        changed = make_job(s, cron="5 9 * * *", now=BEFORE)
        s.commit()
    requests = [TickRequest(j.id, TICK, "0 9 * * *", "UTC") for j in [*wanted, disabled, changed]]
    result = fire_tick(session_factory, broker, TICK, requests, clock=_clock(TICK + timedelta(seconds=1)),
                       grace_secs=60)
    assert sorted(r["job_id"] for r in result.created) == sorted(j.id for j in wanted)
    assert result.unwanted == 2
    assert ready_messages(broker) == 3
    # A second replica firing the same tick creates and enqueues nothing.
    again = fire_tick(session_factory, broker, TICK, requests, clock=_clock(TICK + timedelta(seconds=1)),
                      grace_secs=60)
    assert again.created == [] and ready_messages(broker) == 3
    assert len(_runs(session_factory)) == 3


def test_a_timer_tick_later_than_the_grace_is_skipped(session_factory, broker) -> None:
    with session_factory() as s:
        job = make_job(s, cron="0 9 * * *", now=BEFORE)
        s.commit()
    request = TickRequest(job.id, TICK, "0 9 * * *", "UTC")
    result = fire_tick(session_factory, broker, TICK, [request], clock=_clock(TICK + timedelta(seconds=90)),
                       grace_secs=60)
    assert result.created == [] and result.skipped_late == 1
    assert _runs(session_factory) == []


def test_firing_thread_batches_and_reports_failures(session_factory, broker) -> None:
    with session_factory() as s:
        jobs = [make_job(s, cron="0 9 * * *", now=BEFORE) for _ in range(50)]
        s.commit()
    firing = TickFiring(session_factory, broker, grace_secs=60, clock=_clock(TICK + timedelta(seconds=1)))
    firing.start()
    try:
        for job in jobs:  # one by one: queued batches are merged before firing
            firing.submit([TickRequest(job.id, TICK, "0 9 * * *", "UTC")])
        assert firing.wait_idle(10)
    finally:
        firing.stop()
    assert len(_runs(session_factory)) == 50 and ready_messages(broker) == 50
    assert firing.take_failed_jobs() == set()


def test_one_jobs_failure_does_not_fail_the_tick_for_the_others(session_factory, broker) -> None:
    """A job whose run cannot be built (a corrupt row of one project) fails alone: the tick's other jobs,
    of other projects, get their runs, and only the failing job is left for the missed-tick check."""
    with session_factory() as s:
        healthy = [make_job(s, project_id=f"proj-{i}", cron="0 9 * * *", now=BEFORE) for i in range(3)]
        broken = make_job(s, project_id="proj-odd", cron="0 9 * * *", now=BEFORE)
        s.execute(sa.update(Job).where(Job.id == broken.id).values(default_run_metadata=[1]))
        s.commit()
    firing = TickFiring(session_factory, broker, grace_secs=60, clock=_clock(TICK + timedelta(seconds=1)))
    firing.start()
    try:
        firing.submit([TickRequest(job.id, TICK, "0 9 * * *", "UTC") for job in [*healthy, broken]])
        assert firing.wait_idle(10)
    finally:
        firing.stop()
    assert {run.job_id for run in _runs(session_factory)} == {job.id for job in healthy}
    assert ready_messages(broker) == 3
    assert firing.take_failed_jobs() == {broken.id}


class Recorder:
    def __init__(self) -> None:
        self.submitted: list[TickRequest] = []
        self.failed: set[str] = set()

    def submit(self, requests: list[TickRequest]) -> None:
        self.submitted.extend(requests)

    def take_failed(self) -> set[str]:
        failed, self.failed = self.failed, set()
        return failed


_STARTED: list[BackgroundScheduler] = []


@pytest.fixture(autouse=True)
def _shutdown_entries():  # type: ignore[no-untyped-def]
    yield
    while _STARTED:
        _STARTED.pop().shutdown(wait=False)


def _sync(session_factory, recorder: Recorder, grace_secs: float = 60):  # type: ignore[no-untyped-def]
    entries = BackgroundScheduler(timezone=UTC, executors={EXECUTOR: TickExecutor(recorder.submit)})
    sync = ScheduleSync(entries, session_factory, submit=recorder.submit, take_failed_jobs=recorder.take_failed,
                        executor=EXECUTOR, grace_secs=grace_secs, full_sync_secs=3600)
    entries.start(paused=True)  # entries live in the store, the timer never fires
    _STARTED.append(entries)
    return entries, sync


def test_start_catches_up_only_the_latest_missed_tick_within_the_grace(session_factory) -> None:
    with session_factory() as s:
        recent = make_job(s, cron="* * * * *", now=TICK - timedelta(minutes=10))
        stale = make_job(s, cron="0 8 * * *", now=TICK - timedelta(hours=5))
        has_run = make_job(s, cron="* * * * *", now=TICK - timedelta(minutes=10))
        make_run(s, has_run, triggered_by="cron", idempotency_key=tick_key(has_run.id, TICK), scheduled_at=TICK)
        newborn = make_job(s, cron="* * * * *", now=TICK + timedelta(seconds=5))
        make_job(s, cron="* * * * *", enabled=False, now=BEFORE)
        make_job(s, now=BEFORE)  # not scheduled
        s.commit()
    recorder = Recorder()
    entries, sync = _sync(session_factory, recorder)
    plan = sync.reconcile(TICK + timedelta(seconds=20))
    assert sorted(r.job_id for r in plan.add) == sorted([recent.id, stale.id, has_run.id, newborn.id])
    assert recorder.submitted == [TickRequest(recent.id, TICK, "* * * * *", "UTC", catch_up=True)]
    # Every entry's first tick is the first one after the sync's `now`.
    assert {e.id: e.next_run_time for e in entries.get_jobs()}[recent.id] == TICK + timedelta(minutes=1)
    assert {e.id for e in entries.get_jobs()} == {recent.id, stale.id, has_run.id, newborn.id}


def test_beyond_the_grace_the_missed_tick_is_skipped(session_factory) -> None:
    with session_factory() as s:
        make_job(s, cron="0 9 * * *", now=BEFORE)
        s.commit()
    recorder = Recorder()
    _entries, sync = _sync(session_factory, recorder, grace_secs=5)
    sync.reconcile(TICK + timedelta(seconds=6))
    assert recorder.submitted == []


def test_reconcile_follows_changes_and_is_idle_when_nothing_changed(session_factory) -> None:
    with session_factory() as s:
        job = make_job(s, cron="0 9 * * *", now=BEFORE)
        s.commit()
    recorder = Recorder()
    entries, sync = _sync(session_factory, recorder)
    now = TICK - timedelta(hours=1)
    assert [r.job_id for r in sync.reconcile(now).add] == [job.id]
    assert not sync.reconcile(now)  # fingerprint unchanged: nothing loaded, nothing changed
    changed_at = TICK - timedelta(minutes=30)
    with session_factory() as s:
        s.execute(sa.update(Job).where(Job.id == job.id).values(
            cron="30 9 * * *", updated_at=changed_at, schedule_changed_at=changed_at))
        s.commit()
    assert [r.job_id for r in sync.reconcile(now).replace] == [job.id]
    assert entries.get_job(job.id).next_run_time == TICK + timedelta(minutes=30)
    with session_factory() as s:
        s.execute(sa.update(Job).where(Job.id == job.id).values(enabled=False, updated_at=now,
                                                                 schedule_changed_at=now))
        s.commit()
    assert sync.reconcile(now).remove == [job.id]
    assert entries.get_jobs() == []
    with session_factory() as s:
        s.execute(sa.delete(Job).where(Job.id == job.id))
        s.commit()
    assert not sync.reconcile(now)
    assert recorder.submitted == []


def test_a_failed_firing_is_retried_by_the_next_reconciliation(session_factory) -> None:
    with session_factory() as s:
        job = make_job(s, cron="0 9 * * *", now=BEFORE)
        s.commit()
    recorder = Recorder()
    _entries, sync = _sync(session_factory, recorder)
    sync.reconcile(TICK - timedelta(seconds=1))
    recorder.failed = {job.id}
    sync.reconcile(TICK + timedelta(seconds=3))
    assert recorder.submitted == [TickRequest(job.id, TICK, "0 9 * * *", "UTC", catch_up=True)]


def test_newest_cron_tick_per_job_comes_from_the_keys(session_factory) -> None:
    with session_factory() as s:
        job, other = make_job(s, cron="* * * * *"), make_job(s, cron="* * * * *")
        for minutes in (1, 3, 2):
            tick = TICK + timedelta(minutes=minutes)
            make_run(s, job, triggered_by="cron", idempotency_key=tick_key(job.id, tick), scheduled_at=tick)
        make_run(s, other, triggered_by="manual", idempotency_key="cron-looking-but-manual")
        s.commit()
        assert load_last_cron_ticks(s, [job.id, other.id]) == {job.id: TICK + timedelta(minutes=3)}
