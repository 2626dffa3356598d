"""Driving the worker's ``Runner`` directly in tests: real PostgreSQL, Redis and local HTTP servers.

``harness`` builds a Runner exactly as ``sluice worker`` does (real ``worker.http.post``, real ``Limits``,
a real Redis broker for after-commit effects) with a fast attempt monitor, and offers small helpers to
create jobs/runs and read back runs and events. The fixture ``harness`` (``tests/integration/conftest.py``) gives a
started one.

Start variants: a run starts in one statement when nothing can refuse it, and through further steps
otherwise (``worker.start``): the limit script inside a transaction, the execution window checked in
Python, a pinned older version's snapshot read. ``pytestmark = EVERY_START_VARIANT`` runs a module's tests
over each: the harness then gives every job it makes what sends its runs down that path (a limit with
room to spare, an always-open window, or a newer live version than the runs'), unless the test sets it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import utcnow
from shared.config import Settings
from shared.db.models import Job, Run, RunEvent
from shared.limits.limiter import Limits
from shared.messages.broker import make_broker
from shared.runs.effects import Effects
from shared.runs.moves import move
from shared.runs.status import RunStatus
from tests import factories
from worker.heartbeat import AttemptMonitor
from worker.runner import Handled, Runner

VARIANT_FIELDS: dict[str, dict[str, Any]] = {
    "plain": {},
    "limited": {"max_concurrency": 10_000},
    "windowed": {"execution_window_cron": "* * * * *"},
    "pinned": {},
}
EVERY_START_VARIANT = pytest.mark.parametrize("harness", list(VARIANT_FIELDS), indirect=True)


@dataclass
class Harness:
    runner: Runner
    monitor: AttemptMonitor
    session_factory: sessionmaker[Session]
    limits: Limits
    redis: redis_lib.Redis
    settings: Settings
    broker: Any
    variant: str = "plain"

    def job(self, **fields: Any) -> Job:
        for name, value in VARIANT_FIELDS[self.variant].items():
            fields.setdefault(name, value)
        with self.session_factory() as s:
            job = factories.make_job(s, **fields)
            if self.variant == "pinned":  # the live job moves on: runs made from ``job`` pin version 1
                factories.bump_version(s, job)
            s.commit()
            return job

    def run(self, job: Job, **fields: Any) -> Run:
        with self.session_factory() as s:
            run = factories.make_run(s, job, retry_backoff=job.retry_strategy, **fields)
            s.commit()
            return run

    def handle(self, run_id: str) -> Handled:
        return self.runner.handle(run_id)

    def get(self, run_id: str) -> Run:
        with self.session_factory() as s:
            run = s.get(Run, run_id)
            assert run is not None
            return run

    def events(self, run_id: str, type_: str | None = None) -> list[RunEvent]:
        with self.session_factory() as s:
            query = sa.select(RunEvent).where(RunEvent.run_id == run_id)
            if type_ is not None:
                query = query.where(RunEvent.type == type_)
            return list(s.execute(query.order_by(RunEvent.created_at, RunEvent.id)).scalars())

    def promote(self, run_id: str, now: datetime | None = None) -> None:
        """``delayed → queued`` as the sweeper would once the run is due."""
        with self.session_factory() as s:
            assert move(s, run_id, RunStatus.QUEUED, now=now or utcnow(), effects=Effects(),
                              from_=(RunStatus.DELAYED,)) is not None
            s.commit()

    def update_job(self, job_id: str, **values: Any) -> None:
        with self.session_factory() as s:
            s.execute(sa.update(Job).where(Job.id == job_id).values(**values))
            s.commit()

    def update_run(self, run_id: str, **values: Any) -> None:
        with self.session_factory() as s:
            s.execute(sa.update(Run).where(Run.id == run_id).values(**values))
            s.commit()


def make_harness(settings: Settings, session_factory: sessionmaker[Session], redis_client: redis_lib.Redis, *,
                 variant: str = "plain", limits: Limits | None = None) -> Harness:
    limits = limits or Limits(redis_client, per_thread_connections=True)  # as sluice worker builds it
    broker = make_broker(settings, client=redis_client)
    monitor = AttemptMonitor(session_factory, redis_client, limits, clock=utcnow,
                             heartbeat_interval_secs=settings.heartbeat_interval_secs, poll_secs=0.1)
    runner = Runner(session_factory=session_factory, limits=limits, broker=broker, settings=settings,
                    monitor=monitor, rng=random.Random(7))
    return Harness(runner, monitor, session_factory, limits, redis_client, settings, broker, variant)
