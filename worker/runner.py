"""One attempt, end to end (CONTRACT §5.1): claim, checks, limits, call, record.

``Runner.handle(run_id)`` is what a ``dispatch_run`` message does. It takes every dependency as an
argument (session factory, limits, broker, settings, clock, the HTTP ``post`` function, the attempt
monitor) so tests drive it directly against real PostgreSQL, Redis and HTTP servers.

Transactions per attempt: (1) claim + admission + start, committed before the call so the run shows
``executing`` and nothing is locked while the endpoint works; (2) the outcome, conditional on status and
attempt. Slots are released after (2) commits — on every exit from ``executing``, including a discarded
outcome (canceled or reaped run) and a Sluice-side failure.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from shared.addresses import resolve_checked
from shared.attempts import AttemptEnd, RetryPolicy, finish_attempt
from shared.clock import utcnow
from shared.config import Settings
from shared.effects import commit_and_apply
from shared.limits import Limits
from shared.metrics import observe_attempt
from shared.models import Run
from shared.retries import NON_RETRYABLE, Outcome
from shared.runstate import Effects
from shared.slot_waiters import SlotWaiters
from worker.admission import NotStarted, Started, admit
from worker.call import AttemptCall, CallPlan, PostFunction, perform_call
from worker.claim import claim_ready_run, hold_if_disabled
from worker.heartbeat import AttemptMonitor, InFlight
from worker.http import CallAborted, Resolver, post, user_agent
from worker.outcome import result_of
from worker.trace import TraceClock

log = logging.getLogger("sluice.worker")




@dataclass(frozen=True)
class Handled:
    """What one message did: ``idle`` (nothing claimable), ``held``, ``expired``, ``system_failed``,
    ``redelayed``, ``lost``, ``discarded`` (canceled or reaped mid-call), or the run's status after the
    attempt (``completed``, ``delayed``, ``failed``, ...)."""

    action: str
    run_id: str | None = None
    attempt: int | None = None


class Runner:
    """Handles ``dispatch_run`` messages; thread-safe (one per worker process, shared by its threads)."""

    def __init__(self, *, session_factory: sessionmaker[Session], limits: Limits, broker: Any,
                 settings: Settings, monitor: AttemptMonitor, clock: Callable[[], datetime] = utcnow,
                 post_function: PostFunction = post, resolve: Resolver | None = None,
                 rng: random.Random | None = None) -> None:
        self._session_factory = session_factory
        self._limits = limits
        self._broker = broker
        self._settings = settings
        self._monitor = monitor
        self._clock = clock
        self._post = post_function
        self._resolve: Resolver = resolve or self._checked_resolver
        self._rng = rng or random.Random()
        self._user_agent = user_agent()

    def _checked_resolver(self, url: str) -> tuple[str, int, list[str]]:
        return resolve_checked(url, allow_private=self._settings.allow_private_endpoints)

    def handle(self, run_id: str) -> Handled:
        """Claim the best ready run (not necessarily ``run_id``) and run one attempt of it."""
        picked = time.monotonic()
        now = self._clock()
        effects = Effects()
        session = self._session_factory()
        try:
            claimed = claim_ready_run(session)
            if claimed is None:
                held = hold_if_disabled(session, run_id, now)
                session.commit()
                return Handled("held" if held else "idle", run_id)
            run, job = claimed
            trace = TraceClock(picked=picked, picked_wall=now, queued_at=run.queued_at)
            admission = admit(session, run, job, now=now, settings=self._settings, limits=self._limits,
                              effects=effects, rng=self._rng)
            trace.acquired = time.monotonic()
            commit_and_apply(session, effects, self._broker)
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        if isinstance(admission, NotStarted):
            if admission.action != "lost":
                log.info("run not started", extra={"run_id": run.id, "job_id": run.job_id,
                                                   "action": admission.action, "reason": admission.detail})
            return Handled(admission.action, run.id, run.attempt)
        return self._execute(admission, trace)

    def _execute(self, started: Started, trace: TraceClock) -> Handled:
        run = started.run
        flight = InFlight(run_id=run.id, job_id=run.job_id, attempt=run.attempt,
                          concurrency_key=run.concurrency_key,
                          deadline=(trace.acquired or time.monotonic()) + started.timeout_secs,
                          lease_margin_secs=self._settings.lease_margin_secs)
        self._monitor.register(flight)
        try:
            try:
                call = perform_call(self._plan(started, flight.deadline), post=self._post, resolve=self._resolve,
                                    clock=self._clock, should_abort=flight.aborted.is_set)
            except CallAborted:
                log.info("attempt aborted: run canceled or reaped", extra={
                    "run_id": run.id, "job_id": run.job_id, "attempt": run.attempt})
                return Handled("discarded", run.id, run.attempt)
            except Exception:  # a Sluice-side bug in the call path: the run cannot be processed
                log.exception("attempt failed inside Sluice", extra={"run_id": run.id, "job_id": run.job_id})
                call = None
            trace.responded = call.responded_at if call is not None else time.monotonic()
            return self._record(started, call, trace)
        finally:
            self._monitor.unregister(run.id)
            self._release(run)

    def _plan(self, started: Started, deadline: float) -> CallPlan:
        run = started.run
        return CallPlan(run_id=run.id, job_id=run.job_id, attempt=run.attempt, body=run.payload.encode("utf-8"),
                        endpoint_url=started.settings.endpoint_url,
                        fallback_endpoint_url=started.settings.fallback_endpoint_url,
                        webhook_secret=started.webhook_secret, deadline=deadline,
                        timeout_secs=started.timeout_secs, user_agent=self._user_agent, debug=run.debug_mode)

    def _record(self, started: Started, call: AttemptCall | None, trace: TraceClock) -> Handled:
        run = started.run
        end = self._attempt_end(run, call, trace)
        effects = Effects()
        session = self._session_factory()
        try:
            policy = RetryPolicy(started.max_attempts, started.settings.retry_strategy,
                                 started.settings.retry_delays_secs)
            updated = finish_attempt(session, run.id, end, policy=policy, now=self._clock(), effects=effects,
                                     rng=self._rng)
            commit_and_apply(session, effects, self._broker)
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        outcome = end.outcome
        status = updated.value if updated is not None else "discarded"
        observe_attempt(outcome.error_class or outcome.kind, (end.duration_ms or 0) / 1000)
        log.info("attempt finished", extra={
            "run_id": run.id, "job_id": run.job_id, "attempt": run.attempt, "status": status,
            "outcome": outcome.kind, "error_class": outcome.error_class, "http_status": outcome.http_status,
            "used_fallback": end.used_fallback, "duration_ms": end.duration_ms})
        return Handled(status, run.id, run.attempt)

    def _attempt_end(self, run: Run, call: AttemptCall | None, trace: TraceClock) -> AttemptEnd:
        recorded = time.monotonic()
        if call is None:
            outcome = Outcome(NON_RETRYABLE, "internal", "internal: unexpected error while calling the endpoint")
            return AttemptEnd(attempt=run.attempt, outcome=outcome,
                              duration_ms=_ms(trace.acquired, trace.responded),
                              execution_trace=trace.trace(None, recorded))
        result, truncated = result_of(call.result) if call.outcome.is_success else (None, False)
        return AttemptEnd(
            attempt=run.attempt, outcome=call.outcome, used_fallback=call.used_fallback,
            duration_ms=_ms(trace.acquired, trace.responded), result=result, result_truncated=truncated,
            retry_after_secs=call.result.retry_after_secs, execution_trace=trace.trace(call.result.timings, recorded),
            extra_events=call.debug_events,
        )

    def _release(self, run: Run) -> None:
        try:
            self._limits.release(run.id, run.job_id, run.concurrency_key)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("lease release failed; it will expire", extra={
                "run_id": run.id, "job_id": run.job_id, "error": type(exc).__name__})
        SlotWaiters(self._limits.client).wake([(run.job_id, run.concurrency_key)],  # after the outcome commit
                                              open_session=self._session_factory, broker=self._broker)


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else max(0, round((end - start) * 1000))
