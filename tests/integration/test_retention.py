"""Retention: finished runs older than ``SLUICE_RETENTION_DAYS`` go, with their events and webhook
deliveries, in small batches from a cursor; unfinished runs and newer ones stay."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import sqlalchemy as sa

from scheduler.maintenance import MaintenanceContext, MaintenanceLoop, default_tasks
from shared.clock import utcnow
from shared.db.models import Run, RunEvent, WebhookDelivery
from shared.ids import uuid7
from shared.messages.broker import make_broker
from shared.runs import retention
from shared.runs.retention import prune_finished_runs
from tests.factories import make_job, make_run

NOW = utcnow()
OLD = NOW - timedelta(days=40)
CUTOFF = NOW - timedelta(days=30)


def _event(session, run_id: str) -> None:
    session.add(RunEvent(run_id=run_id, created_at=OLD, id=uuid7(), type="state_change", message=None, data={}))


def _delivery(session, run: Run) -> None:
    session.add(WebhookDelivery(id=uuid7(), run_id=run.id, job_id=run.job_id, event_type="run.completed",
                                url="http://hook.test/", body="{}", state="delivered", attempts=1,
                                next_attempt_at=OLD, created_at=OLD, updated_at=OLD))


def _seed(session):  # type: ignore[no-untyped-def]
    job, other = make_job(session), make_job(session, project_id="proj-b")
    old = [make_run(session, j, status="completed", attempt=1, now=OLD, finished_at=OLD) for j in (job, other)
           for _ in range(3)]
    recent = make_run(session, job, status="failed", attempt=1, now=OLD, finished_at=NOW - timedelta(days=1))
    unfinished = [make_run(session, job, status=status, now=OLD) for status in ("queued", "delayed", "waiting")]
    executing = make_run(session, job, status="executing", attempt=1, now=OLD, started_at=OLD, heartbeat_at=NOW)
    session.flush()
    for run in [*old, recent, *unfinished, executing]:
        _event(session, run.id)
        _delivery(session, run)
    session.commit()
    return old, [recent, *unfinished, executing]


def _ids(session, model, column):  # type: ignore[no-untyped-def]
    session.expire_all()
    return set(session.scalars(sa.select(column)))


def test_finished_runs_past_the_cutoff_go_with_their_events_and_deliveries(session) -> None:
    _old, kept = _seed(session)
    deleted, cursor = prune_finished_runs(session, CUTOFF, None)
    session.commit()
    assert (deleted, cursor) == (6, None)
    kept_ids = {run.id for run in kept}
    assert _ids(session, Run, Run.id) == kept_ids
    assert _ids(session, RunEvent, RunEvent.run_id) == kept_ids
    assert _ids(session, WebhookDelivery, WebhookDelivery.run_id) == kept_ids


def test_pruning_is_batched_and_resumes_from_its_cursor(session, monkeypatch) -> None:
    """A pass never deletes more than its batch; a full batch keeps the cursor on the same jobs, and a pass
    over fewer jobs than a page ends the walk (the next one starts over)."""
    old, kept = _seed(session)
    monkeypatch.setattr(retention, "JOBS_PER_PASS", 1)
    passes, cursor = [], None
    for _ in range(6):
        deleted, cursor = prune_finished_runs(session, CUTOFF, cursor, limit=2)
        session.commit()
        passes.append(deleted)
        if cursor is None and sum(passes) == len(old):
            break
    assert max(passes) == 2 and sum(passes) == len(old)
    assert _ids(session, Run, Run.id) == {run.id for run in kept}


def test_the_scheduler_prunes_when_retention_is_set(settings, session, session_factory, redis_client) -> None:
    _old, kept = _seed(session)
    settings = settings.with_overrides(retention_days=30)
    ctx = MaintenanceContext(settings=settings, session_factory=session_factory,
                             broker=make_broker(settings, client=redis_client), redis=redis_client)
    assert "prune_retention" in [task.name for task in default_tasks(settings)]
    assert "prune_retention" not in [task.name for task in default_tasks(settings.with_overrides(retention_days=None))]
    stop = threading.Event()
    thread = threading.Thread(target=MaintenanceLoop(ctx, default_tasks(settings)).run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(_ids(session, Run, Run.id)) > len(kept):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert _ids(session, Run, Run.id) == {run.id for run in kept}
