"""The attempt monitor's lease upkeep (worker.heartbeat) never outlives the attempt it keeps alive.

A lease left behind by an ended attempt holds a slot of its job's ``max_concurrency`` until it expires
(the attempt's timeout + ``SLUICE_LEASE_MARGIN_SECS``) or the scheduler's leaked-lease sweep removes it.
"""

from __future__ import annotations

import time
from typing import Any, cast

import redis as redis_lib
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared import redis_keys
from shared.clock import utcnow
from shared.limits.limiter import LimitRequest
from tests.integration.runner_harness import Harness
from worker.heartbeat import AttemptMonitor, InFlight


def _monitor(harness: Harness, session_factory: Any) -> AttemptMonitor:
    return AttemptMonitor(cast(sessionmaker[Session], session_factory), harness.redis, harness.limits,
                          heartbeat_interval_secs=60, clock=utcnow)


def _flight(run_id: str, job_id: str, *, lease_pending: bool = False) -> InFlight:
    return InFlight(run_id=run_id, job_id=job_id, attempt=1, concurrency_key=None,
                    deadline=time.monotonic() + 60, lease_margin_secs=30, lease_pending=lease_pending)


def test_an_attempt_that_ends_during_a_heartbeat_keeps_no_lease(harness: Harness,
                                                                 session_factory: sessionmaker[Session]) -> None:
    job = harness.job(max_concurrency=2)
    run = harness.run(job, status="executing", attempt=1, started_at=utcnow(), heartbeat_at=utcnow())
    assert harness.limits.acquire(LimitRequest(run_id=run.id, job_id=job.id, max_concurrency=2, concurrency_key=None,
                                               max_concurrency_per_key=None, lease_ms=60_000)).admitted
    monitor: AttemptMonitor

    def attempt_ends() -> None:  # as the runner ends it: its outcome is in, then unregister and release
        monitor.unregister(run.id)
        harness.limits.release(run.id, job.id, None)

    def sessions() -> Session:  # the heartbeat's UPDATE has found the run executing when the attempt ends
        session = session_factory()
        sa.event.listen(session, "after_commit", lambda _session: attempt_ends(), once=True)
        return session

    monitor = _monitor(harness, sessions)
    monitor.register(_flight(run.id, job.id))
    monitor.tick(force_heartbeat=True)
    assert harness.get(run.id).heartbeat_at is not None
    assert harness.limits.slots_in_use(job.id) == 0  # not re-created for an attempt that has ended
    assert monitor.in_flight() == 0


def test_a_heartbeat_leaves_a_pending_lease_to_the_next_poll(harness: Harness,
                                                              session_factory: sessionmaker[Session],
                                                              redis_client: redis_lib.Redis) -> None:
    """An attempt of a job without limits has its lease written at the monitor's next poll; one that ends
    before then releases nothing. A heartbeat between the two must not write it either."""
    job = harness.job()
    run = harness.run(job, status="executing", attempt=1, started_at=utcnow(), heartbeat_at=utcnow())
    monitor = _monitor(harness, session_factory)
    flight = _flight(run.id, job.id, lease_pending=True)
    monitor.register(flight)
    monitor._heartbeat([flight])  # the heartbeat of a tick whose lease records ran just before it registered
    assert harness.limits.slots_in_use(job.id) == 0
    monitor.unregister(run.id)
    assert flight.lease_pending  # so the runner releases nothing: there is nothing to release
    monitor.register(still_running := _flight(run.id, job.id, lease_pending=True))
    monitor.tick(force_heartbeat=True)  # a poll while it still runs: written, then extended
    assert not still_running.lease_pending and harness.limits.slots_in_use(job.id) == 1
    assert redis_client.exists(redis_keys.concurrency_job(job.id))
