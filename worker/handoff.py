"""In-worker slot hand-off: the thread whose attempt just ended starts the best waiting run itself.

A run refused for a concurrency slot is registered as a waiter by the limit script itself
(``shared.limits.limiter``, ``shared.limits.waiters``). When an attempt ends (its outcome committed), one script
either drops its leases (nobody waits) or pops the best waiter and keeps them. The worker thread then
locks that run, moves it ``delayed → queued`` (event message ``slot released``) and admits it in the same
transaction with the ended attempt's leases *handed over* — dropped inside the admission script, so the
slot is never seen free by anyone else and the cap is never exceeded — and runs its attempt right away,
in the same thread. No promotion transaction, no message, no fetch by another thread: that hop cost
15–40 ms of every 0.1 s slot (docs/flow-control.md, "Measured").

Everything §5.1 checks still applies: the woken run goes through ``worker.admission.admit`` (expiry,
version policy, window, every limit). A popped run that is not waiting any more (started, canceled, in a
retry back-off, its job disabled) is skipped and the next waiter popped; after ``MAX_POPS`` or on any
error the leases are released and waiters are woken the ordinary way (``SlotWaiters.wake``: promote and
enqueue), and every waiter keeps its ``scheduled_at`` retry (§5.8) as the safety net.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from shared.config import Settings
from shared.db.models import Job, Run
from shared.db.prepared import HotStatement, prepare_once
from shared.ids import uuid7
from shared.limits.limiter import Limits
from shared.limits.waiters import MAX_POPS, WAKE_MESSAGE, SlotWaiters, promote_waiter
from shared.runs.commit import commit_and_apply
from shared.runs.moves import move_run, supports_moves
from shared.runs.transitions import Effects, RunStatus, status_columns
from worker.admission import Started, admit
from worker.direct import DirectStatements
from worker.fast_start import FastClaim
from worker.handoff_start import DirectHandOffStart
from worker.trace import TraceClock

log = logging.getLogger("sluice.worker")

# A chain of hand-offs runs inside one dispatch message: stop chaining after this long so the message's
# time limit (worker.actors.DISPATCH_TIME_LIMIT_MS = longest attempt + 1 h) is never reached.
CHAIN_SECS = 1800

Successor = tuple[Started | FastClaim, TraceClock]  # FastClaim: started by worker.handoff_start

# Lock the popped run with its job. Blocking (no SKIP LOCKED): a worker refusing this very run right now
# holds the row only until its re-delay commits, and the run is then exactly what we want.
_LOCK = (sa.select(Run, Job).join(Job, Job.id == Run.job_id)
         .where(Run.id == sa.bindparam("run_id")).with_for_update(of=Run))
# Prepared once per connection where the engine allows it (shared.db.prepared): planning the join over the
# runs table's indexes costs more than running it.
_LOCK_HOT = HotStatement.build("sluice_handoff_lock", str(_LOCK.compile(dialect=postgresql.dialect()))
                               .replace("%(run_id)s", ":run_id"))
_LOCK_PREPARED = sa.select(Run, Job).from_statement(
    sa.text(f"EXECUTE {_LOCK_HOT.name}(:run_id)").columns(*Run.__table__.columns, *Job.__table__.columns))

# The common case in one statement (PostgreSQL): a delayed waiter whose retry back-off is over, of an enabled
# job, moves ``delayed → queued`` with its ``state_change`` event (message ``slot released``) — the UPDATE
# locks the row — and comes back with its job. The columns set are ``runstate.status_columns(QUEUED)``'s.
_WAKE_SQL = """
WITH woken AS (
  UPDATE runs SET status = 'queued', queued_at = :now, due_at = NULL
  WHERE id = :run_id AND status = 'delayed' AND (next_retry_at IS NULL OR next_retry_at <= :now)
    AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = runs.job_id AND jobs.enabled)
  RETURNING runs.*
), logged AS (
  INSERT INTO run_events (id, run_id, type, message, data, created_at)
  SELECT :event_id, woken.id, 'state_change', :message, CAST(:data AS JSONB), :now FROM woken
)
SELECT {columns} FROM woken JOIN jobs ON jobs.id = woken.job_id
"""
_WAKE_HOT = HotStatement.build("sluice_handoff_wake", _WAKE_SQL.replace("{columns}", ", ".join(
    [f"woken.{c.name}" for c in Run.__table__.columns] + [f"jobs.{c.name}" for c in Job.__table__.columns])))
_WAKE_DATA = json.dumps({"from": RunStatus.DELAYED.value, "to": RunStatus.QUEUED.value})


class _Ended(NamedTuple):
    """The attempt whose end frees the slots (its leases are handed over to the successor)."""

    id: str
    job_id: str
    concurrency_key: str | None


class SlotHandOff:
    """Ends attempts and hands their slots over; thread-safe (one per runner)."""

    def __init__(self, *, session_factory: sessionmaker[Session], limits: Limits, broker: Any,
                 settings: Settings, clock: Callable[[], datetime], rng: random.Random,
                 direct: DirectStatements | None = None) -> None:
        self._direct_start = (DirectHandOffStart(direct, limits=limits, settings=settings)
                              if direct is not None else None)
        self._session_factory = session_factory
        self._limits = limits
        self._broker = broker
        self._settings = settings
        self._clock = clock
        self._rng = rng

    def end_attempt(self, run_id: str, job_id: str, concurrency_key: str | None, *,
                    chain: bool) -> Successor | None:
        """After the outcome of ``run_id``'s attempt is committed: with ``chain``, start the best run waiting
        for its slot and return it for this thread to execute; otherwise (or if none could start) release
        the slot and wake waiters the ordinary way. Never raises."""
        ended = _Ended(run_id, job_id, concurrency_key)
        try:
            if chain:
                for _ in range(MAX_POPS):
                    waiter = self._limits.end_attempt(run_id, job_id, concurrency_key, hand_over=True)
                    if waiter is None:
                        return None  # leases dropped, and nobody was waiting for them
                    successor = self._start(waiter, ended)
                    if successor is not None:
                        return successor
            self._limits.release(run_id, job_id, concurrency_key)
        except (redis.exceptions.RedisError, OSError, SQLAlchemyError) as exc:
            log.warning("slot hand-off failed; the lease is released or expires, waiters retry", extra={
                "run_id": run_id, "job_id": job_id, "error": type(exc).__name__})
            try:
                self._limits.release(run_id, job_id, concurrency_key)
            except (redis.exceptions.RedisError, OSError):
                return None  # the lease expires (timeout + margin); waiters retry at scheduled_at
        SlotWaiters(self._limits.client).wake([(job_id, concurrency_key)],
                                              open_session=self._session_factory, broker=self._broker)
        return None

    def _start(self, waiter_id: str, ended: _Ended) -> Successor | None:
        """Lock ``waiter_id``; if it still waits for a slot, wake and admit it with ``ended``'s leases: on
        the direct connection when it can decide (worker.handoff_start), else in a session."""
        picked = time.monotonic()
        if self._direct_start is not None:
            now = self._clock()
            started = self._direct_start.start(waiter_id, (ended.id, ended.concurrency_key), now)
            if started is not None:
                return started, TraceClock(picked=picked, picked_wall=now, queued_at=started.queued_at,
                                           acquired=time.monotonic())
        session = self._session_factory()
        try:
            now = self._clock()
            woken = _wake_delayed(session, waiter_id, now)
            if woken is None:  # not a delayed waiter: lock it and look (queued, or no longer waiting)
                prepared = prepare_once(session.connection(), _LOCK_HOT)
                row = session.execute(_LOCK_PREPARED if prepared else _LOCK, {"run_id": waiter_id}).first()
                now = self._clock()
                if row is None or not _waiting(row[0], row[1], now) or not _wake(session, row[0], now):
                    session.rollback()
                    return None
                woken = row[0], row[1]
            run, job = woken
            effects = Effects()
            admission = admit(session, run, job, now=now, settings=self._settings, limits=self._limits,
                              effects=effects, rng=self._rng, hand_over=(ended.id, ended.concurrency_key))
            acquired = time.monotonic()
            effects.enqueue = [i for i in effects.enqueue if i != run.id]  # it starts here, or waits again
            commit_and_apply(session, effects, self._broker)
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        if not isinstance(admission, Started):
            log.info("handed-over run not started", extra={"run_id": waiter_id, "job_id": ended.job_id,
                                                           "action": admission.action, "reason": admission.detail})
            return None
        return admission, TraceClock(picked=picked, picked_wall=now, queued_at=run.queued_at, acquired=acquired)


def _wake_delayed(session: Session, run_id: str, now: datetime) -> tuple[Run, Job] | None:
    """The one-statement wake of a delayed waiter (PostgreSQL); ``None`` if it did not apply."""
    if not supports_moves(session):
        return None
    params = {"run_id": run_id, "now": now, "event_id": uuid7(), "message": WAKE_MESSAGE, "data": _WAKE_DATA}
    prepared = prepare_once(session.connection(), _WAKE_HOT)
    statement = sa.text(f"EXECUTE {_WAKE_HOT.name}({', '.join(':' + k for k in _WAKE_HOT.order)})"
                        if prepared else _WAKE_HOT.text.text)
    row = session.execute(sa.select(Run, Job).from_statement(
        statement.columns(*Run.__table__.columns, *Job.__table__.columns)), params).first()
    return None if row is None else (row[0], row[1])


def _waiting(run: Run, job: Job, now: datetime) -> bool:
    """Still waiting for a slot: ``delayed`` with no retry back-off ahead, or ``queued`` and not held; job
    enabled (a disabled job's runs are held by the ordinary claim, §5.12)."""
    if not job.enabled:
        return False
    if run.status == RunStatus.QUEUED.value:
        return run.held_at is None
    return run.status == RunStatus.DELAYED.value and (run.next_retry_at is None or run.next_retry_at <= now)


def _wake(session: Session, run: Run, now: datetime) -> bool:
    """``delayed → queued`` (message ``slot released``) on the locked row; a queued run stays as it is."""
    if run.status == RunStatus.QUEUED.value:
        return True
    if supports_moves(session):
        moved = move_run(session, run.id, from_status=RunStatus.DELAYED, to=RunStatus.QUEUED, now=now,
                         effects=Effects(), message=WAKE_MESSAGE) is not None
    else:
        moved = promote_waiter(session, run.id, now=now, effects=Effects())
    if not moved:
        return False
    for name, value in status_columns(RunStatus.QUEUED, {}, now).items():
        set_committed_value(run, name, value)
    return True
