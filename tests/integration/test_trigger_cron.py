"""Cron runs (``shared.triggers.cron.create_cron_runs``, CONTRACT §6.3, §6.6): one run per (job, tick),
gated by dependencies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from shared.db.models import Run, RunEvent
from shared.runs.effects import Effects
from shared.runs.moves import release_waiting
from shared.triggers.cron import create_cron_runs
from tests.factories import make_dependency, make_job, make_run


def test_cron_run_contents_and_uniqueness(session):
    job = make_job(session, tags={"t": "1"}, default_run_metadata={"m": "1"}, run_ttl_secs=30)
    tick = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    now = tick + timedelta(seconds=1)
    effects = Effects()
    [created] = create_cron_runs(session, [job], tick, now, effects)
    run = session.get(Run, created["id"])
    assert run is not None
    assert run.status == "queued" and run.payload == "{}" and run.tags == {"t": "1"}
    assert run.run_metadata == {"m": "1"} and run.priority == 0 and run.triggered_by == "cron"
    assert run.created_by == "system:cron" and run.scheduled_at == tick
    assert run.idempotency_key == f"cron:{job.id}:2030-01-01T09:00:00Z"
    assert run.expires_at == tick + timedelta(seconds=30)
    assert effects.enqueue == [run.id]
    assert create_cron_runs(session, [job], tick, now, Effects()) == []  # the tick has its run already
    assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 1
    assert session.scalar(sa.select(sa.func.count()).select_from(RunEvent)) == 1


def test_cron_run_future_tick_is_delayed_and_dependencies_gate(session):
    up, job = make_job(session), make_job(session)
    tick = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    [ahead] = create_cron_runs(session, [up], tick, tick - timedelta(seconds=5), Effects())
    assert ahead["status"] == "delayed" and ahead["due_at"] == tick
    make_dependency(session, job, up)
    [gated] = create_cron_runs(session, [job], tick, tick, Effects())
    assert gated["status"] == "waiting" and gated["expires_at"] is None


def test_a_cron_run_does_not_correlate_on_its_tick_key(session):
    """A cron run's tick key is no correlation key (no upstream run can have it): the edge is evaluated on
    the upstream job's newest terminal run, so a satisfied edge lets the cron run start."""
    up, job = make_job(session), make_job(session)
    make_dependency(session, job, up)
    tick = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    make_run(session, up, status="completed", now=tick - timedelta(minutes=5))
    [created] = create_cron_runs(session, [job], tick, tick, Effects())
    assert created["status"] == "queued"


def test_a_waiting_cron_run_is_released_when_its_upstream_finishes(session):
    up, job = make_job(session), make_job(session)
    make_dependency(session, job, up)
    tick = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    [waiting] = create_cron_runs(session, [job], tick, tick, Effects())
    assert waiting["status"] == "waiting"
    make_run(session, up, status="completed", now=tick + timedelta(seconds=5))
    effects = Effects()
    assert release_waiting(session, job.id, now=tick + timedelta(seconds=6), effects=effects) == 1
    assert effects.enqueue == [waiting["id"]]


def test_a_cron_run_with_a_dependency_key_correlates_on_it(session):
    up = make_job(session)
    job = make_job(session, default_run_metadata={"dependency_key": "nightly"})
    make_dependency(session, job, up)
    tick = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
    make_run(session, up, status="completed", now=tick - timedelta(minutes=5),
             run_metadata={"dependency_key": "other"})
    [held] = create_cron_runs(session, [job], tick, tick, Effects())
    assert held["status"] == "waiting"
    make_run(session, up, status="completed", now=tick - timedelta(minutes=1),
             run_metadata={"dependency_key": "nightly"})
    later = tick + timedelta(minutes=1)
    [created] = create_cron_runs(session, [job], later, later, Effects())
    assert created["status"] == "queued"
