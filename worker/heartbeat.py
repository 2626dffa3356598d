"""Liveness and cancellation of in-flight attempts (CONTRACT §5.5, §5.17): one thread per worker process.

Every ``POLL_SECS`` the monitor reads the cancel flags (``shared.redis_keys.run_cancel``) of all in-flight
attempts in one ``MGET``; every ``SLUICE_HEARTBEAT_INTERVAL_SECS`` it refreshes ``heartbeat_at`` of all of
them in one conditional ``UPDATE`` (status ``executing`` **and** the attempt number this worker runs) and
extends their leases, re-creating any that Redis lost meanwhile (a restart without persistence): an attempt
the row update has just confirmed as running always counts against its caps again. An attempt whose flag
is set, or whose row the heartbeat no longer matches (canceled or reaped), is marked aborted; the call polls
``should_abort`` and stops within about a second, and its outcome is discarded by the conditional record
update anyway.

One thread per process rather than per attempt: the cost is one Redis round trip per 0.5 s and one
UPDATE per interval whatever the number of worker threads.

The same thread records, in one pipeline per poll, the leases of attempts of jobs without limits that are
still running. Such a lease only lets a limit added later count the attempt, so it need not exist before the
call: an attempt that ends within a poll never touches Redis, and one that started less than a poll before
a limit was added is counted a poll late (like the attempts that were already running, which a new limit
cannot stop either).

It also drops, in one pipeline per poll, the leases of attempts that ended *terminally* in a job
without limits, or in a job whose limits had room to spare when the attempt started (``release_later``,
``shared.limits.limiter.LimitDecision.roomy``: every cap at most a quarter used, no run waiting for a slot).
Nobody waits for such a slot, and a terminal run never takes a lease again, so a release up to
``POLL_SECS`` late only over-counts for that long (the safe direction: a cap is never exceeded) and saves
the worker a Redis round trip per run. Should runs start waiting meanwhile, they are refused and retry at
their ``scheduled_at`` as usual.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared import redis_keys
from shared.db.models import Run
from shared.limits.limiter import Limits
from shared.runs.status import RunStatus

log = logging.getLogger("sluice.worker.heartbeat")

POLL_SECS = 0.5


@dataclass
class InFlight:
    """One executing attempt this process runs."""

    run_id: str
    job_id: str
    attempt: int
    concurrency_key: str | None
    deadline: float  # monotonic
    lease_margin_secs: int
    aborted: threading.Event = field(default_factory=threading.Event)
    lease_pending: bool = False  # a run of a job without limits: its lease is recorded at the next poll
    lease_settled: threading.Event = field(default_factory=threading.Event)  # clear while written or extended

    def __post_init__(self) -> None:
        self.lease_settled.set()


class AttemptMonitor:
    """Heartbeats, lease extension and cancel polling for every in-flight attempt of this process."""

    def __init__(self, session_factory: sessionmaker[Session], redis_client: redis.Redis, limits: Limits, *,
                 heartbeat_interval_secs: float, clock: Callable[[], datetime],
                 poll_secs: float = POLL_SECS) -> None:
        self._session_factory = session_factory
        self._redis = redis_client
        self._limits = limits
        self._interval = heartbeat_interval_secs
        self._poll = poll_secs
        self._clock = clock
        self._flights: dict[str, InFlight] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_heartbeat = time.monotonic() + self._interval
        self._releases: list[tuple[str, str, str | None]] = []  # (run, job, concurrency key): release_later

    def start(self) -> AttemptMonitor:
        self._thread = threading.Thread(target=self._loop, name="sluice-attempt-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush_releases()

    def release_later(self, run_id: str, job_id: str, concurrency_key: str | None) -> None:
        """Drop the run's leases at the next poll (see the module doc for when that is allowed)."""
        with self._lock:
            self._releases.append((run_id, job_id, concurrency_key))

    def record_leases(self) -> None:
        """Record the leases of attempts registered with ``lease_pending`` that are still running, in one
        pipeline. An attempt that ends meanwhile is unregistered only once its lease is written
        (``unregister`` waits for it), so its release always comes after the write, never before."""
        with self._lock:
            pending = [flight for flight in self._flights.values() if flight.lease_pending]
            for flight in pending:
                flight.lease_pending = False
                flight.lease_settled.clear()
        if not pending:
            return
        now = time.monotonic()
        try:
            self._limits.extend_many([(f.run_id, f.job_id, f.concurrency_key,
                                       max(1, int((f.deadline - now + f.lease_margin_secs) * 1000)))
                                      for f in pending], recreate=True)
        except (redis.exceptions.RedisError, OSError):
            log.warning("lease record failed; the next poll tries again", extra={"leases": len(pending)})
            for flight in pending:
                flight.lease_pending = True
        finally:
            for flight in pending:
                flight.lease_settled.set()

    def flush_releases(self) -> None:
        """Drop the leases queued by ``release_later`` in one pipeline; on a Redis error they expire."""
        with self._lock:
            releases, self._releases = self._releases, []
        if not releases:
            return
        pipe = self._redis.pipeline(transaction=False)
        for run_id, job_id, concurrency_key in releases:
            pipe.zrem(redis_keys.concurrency_job(job_id), run_id)
            if concurrency_key:
                pipe.zrem(redis_keys.concurrency_key(job_id, concurrency_key), run_id)
        try:
            pipe.execute()
        except (redis.exceptions.RedisError, OSError):
            log.warning("lease release failed; the leases expire", extra={"leases": len(releases)})

    def register(self, flight: InFlight) -> None:
        with self._lock:
            self._flights[flight.run_id] = flight

    def unregister(self, run_id: str) -> None:
        """The attempt has ended; returns once a write or extension of its lease in progress is done."""
        with self._lock:
            flight = self._flights.pop(run_id, None)
        if flight is not None:
            flight.lease_settled.wait()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)

    def _snapshot(self) -> list[InFlight]:
        with self._lock:
            return list(self._flights.values())

    def _loop(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.tick()
            except Exception:  # a broken tick must not end liveness for the process; the next one retries
                log.exception("attempt monitor tick failed")

    def tick(self, *, force_heartbeat: bool = False) -> None:
        """One round: pending lease records, queued lease releases, cancel flags, heartbeats when due (or when
        forced, for tests)."""
        self.record_leases()
        self.flush_releases()
        flights = self._snapshot()
        if not flights:
            self._next_heartbeat = time.monotonic() + self._interval
            return
        self._poll_cancel_flags(flights)
        if force_heartbeat or time.monotonic() >= self._next_heartbeat:
            self._next_heartbeat = time.monotonic() + self._interval
            self._heartbeat(flights)

    def _poll_cancel_flags(self, flights: list[InFlight]) -> None:
        try:
            flags = self._redis.mget([redis_keys.run_cancel(f.run_id) for f in flights])
        except (redis.exceptions.RedisError, OSError):
            return  # best effort (§5.17); the heartbeat's row check still catches a cancel
        for flight, flag in zip(flights, flags, strict=True):
            if flag is not None:
                flight.aborted.set()

    def _heartbeat(self, flights: list[InFlight]) -> None:
        now = self._clock()
        session = self._session_factory()
        try:
            alive = set(session.execute(
                sa.update(Run)
                .where(Run.status == RunStatus.EXECUTING.value,
                       sa.tuple_(Run.id, Run.attempt).in_([(f.run_id, f.attempt) for f in flights]))
                .values(heartbeat_at=now)
                .returning(Run.id)
                .execution_options(synchronize_session=False)
            ).scalars())
            session.commit()
        finally:
            session.close()
        for flight in flights:
            if flight.run_id not in alive:
                flight.aborted.set()  # canceled, or reaped after a stall: this attempt no longer counts
        held = self._hold([flight for flight in flights if flight.run_id in alive])
        try:
            for flight in held:
                self._extend(flight)
        finally:
            for flight in held:
                flight.lease_settled.set()

    def _hold(self, flights: list[InFlight]) -> list[InFlight]:
        """Of ``flights``, those still running with their lease written, each marked as being written:
        ``unregister`` waits for it, so an attempt's release comes after its extension. An attempt that ended
        since the heartbeat's UPDATE is left alone (extending it would re-create a lease its end dropped),
        and so is one whose lease is still pending (the next poll writes it; written now, an end that finds
        it still pending would not release it)."""
        with self._lock:
            held = [f for f in flights if self._flights.get(f.run_id) is f and not f.lease_pending]
            for flight in held:
                flight.lease_settled.clear()
        return held

    def _extend(self, flight: InFlight) -> None:
        lease_ms = max(1, int((flight.deadline - time.monotonic() + flight.lease_margin_secs) * 1000))
        try:
            if not self._limits.extend(flight.run_id, flight.job_id, flight.concurrency_key, lease_ms,
                                       recreate=True):
                log.warning("lease re-created (Redis had lost it)",
                            extra={"run_id": flight.run_id, "job_id": flight.job_id})
        except (redis.exceptions.RedisError, OSError):
            log.warning("lease extension failed", extra={"run_id": flight.run_id, "job_id": flight.job_id})
