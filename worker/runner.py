"""One attempt, end to end (CONTRACT §5.1): start, call, record, release.

``Runner.handle(run_id)`` is what a ``dispatch_run`` message does. It takes every dependency as an
argument (engine, session factory, limits, broker, settings, clock, the HTTP ``post`` function, the
attempt monitor) so tests drive it directly against real PostgreSQL, Redis and HTTP servers.

Writes per attempt: (1) the start (``worker.start``), committed before the call so the run shows
``executing`` and nothing is locked while the endpoint works; (2) the outcome, conditional on status and
attempt (``worker.recording``). Each is one statement in the common case. Slots are released after (2)
commits — on every exit from ``executing``, including a discarded outcome (canceled or reaped run) and a
Sluice-side failure — or handed straight to a waiting run (``worker.handoff``).
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

from shared.clock import utcnow
from shared.config import Settings
from shared.egress.addresses import resolve_checked
from shared.limits.limiter import Limits
from shared.metrics import observe_attempt
from shared.runs.attempts import AttemptEnd, PlannedEnd, RetryPolicy, plan_end
from shared.runs.retries import NON_RETRYABLE, Outcome
from shared.runs.status import RunStatus, is_terminal
from shared.runs.trace_context import attempt_traceparent
from worker.attempt import Attempt
from worker.call import AttemptCall, CallPlan, PostFunction, perform_call
from worker.connection import ThreadConnection
from worker.handoff import CHAIN_SECS, SlotHandOff
from worker.heartbeat import AttemptMonitor, InFlight
from worker.holding import hold_if_disabled
from worker.http import CallAborted, Resolver, post, user_agent
from worker.outcome import result_of
from worker.recording import Recorder
from worker.start import NotStarted, Starter
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
                 rng: random.Random | None = None, stopping: Callable[[], bool] = lambda: False) -> None:
        self._limits = limits
        self._settings = settings
        self._monitor = monitor
        self._clock = clock
        self._post = post_function
        self._resolve: Resolver = resolve or self._checked_resolver
        self._rng = rng or random.Random()
        self._user_agent = user_agent()
        self.connection = ThreadConnection(session_factory.kw["bind"])  # the sessions' engine
        self._recorder = Recorder(self.connection, session_factory, broker)
        self._starter = Starter(self.connection, self._recorder, limits=limits, settings=settings, rng=self._rng)
        self._stopping = stopping  # no more hand-offs once the worker is stopping
        self._handoff = SlotHandOff(starter=self._starter, limits=limits, session_factory=session_factory,
                                    broker=broker, clock=clock)

    def _checked_resolver(self, url: str) -> tuple[str, int, list[str]]:
        return resolve_checked(url, policy=self._settings.address_policy)

    def handle(self, run_id: str) -> Handled:
        """Start the best ready run (``run_id`` if it is one) and run one attempt of it."""
        picked = time.monotonic()
        now = self._clock()
        started = self._starter.start(run_id, now)
        if started is None or started.run_id != run_id:
            # The message's own run did not start: if its job is disabled, it is held now (event ``held``),
            # whether or not another ready run was started instead (§5.1 step 2).
            held = hold_if_disabled(self.connection, run_id, now)
            if started is None:
                return Handled("held" if held else "idle", run_id)
        if isinstance(started, NotStarted):
            return Handled(started.action, started.run_id)
        trace = TraceClock(picked=picked, picked_wall=now, queued_at=started.queued_at, acquired=time.monotonic())
        return self._execute(started, trace)

    def _execute(self, attempt: Attempt, trace: TraceClock) -> Handled:
        """Run ``attempt``; while its end hands the slot straight to a waiting run (``worker.handoff``), run
        that one too, in this thread, for at most ``CHAIN_SECS``."""
        chain_until = time.monotonic() + CHAIN_SECS
        while True:
            handled, successor = self._run_attempt(attempt, trace, chain_until)
            if successor is None:
                return handled
            attempt = successor.attempt
            trace = TraceClock(picked=successor.picked, picked_wall=successor.picked_wall,
                               queued_at=attempt.queued_at, acquired=successor.acquired)

    def _run_attempt(self, attempt: Attempt, trace: TraceClock, chain_until: float) -> tuple[Handled, Any]:
        flight = InFlight(run_id=attempt.run_id, job_id=attempt.job_id, attempt=attempt.attempt,
                          concurrency_key=attempt.concurrency_key,
                          deadline=(trace.acquired or time.monotonic()) + attempt.timeout_secs,
                          lease_margin_secs=self._settings.lease_margin_secs, lease_pending=attempt.lease_pending)
        self._monitor.register(flight)
        handled: Handled | None = None
        try:
            handled = self._call_and_record(attempt, trace, flight)
        finally:
            self._monitor.unregister(attempt.run_id)
            # Hand the slot on only after a normal end (never while an exception is on its way out).
            chain = handled is not None and not self._stopping() and time.monotonic() < chain_until
            # Still pending once unregistered: the monitor never wrote this attempt's lease.
            successor = self._end(attempt, chain=chain, terminal=handled is not None and is_terminal(handled.action),
                                  leased=not flight.lease_pending)
        return handled, successor

    def _call_and_record(self, attempt: Attempt, trace: TraceClock, flight: InFlight) -> Handled:
        try:
            call = perform_call(self._plan(attempt, flight.deadline), post=self._post, resolve=self._resolve,
                                clock=self._clock, should_abort=flight.aborted.is_set)
        except CallAborted:
            log.info("attempt aborted: run canceled or reaped", extra={
                "run_id": attempt.run_id, "job_id": attempt.job_id, "attempt": attempt.attempt})
            return Handled("discarded", attempt.run_id, attempt.attempt)
        except Exception:  # a Sluice-side bug in the call path: the run cannot be processed
            log.exception("attempt failed inside Sluice", extra={"run_id": attempt.run_id, "job_id": attempt.job_id})
            call = None
        trace.responded = call.responded_at if call is not None else time.monotonic()
        return self._record(attempt, call, trace)

    def _end(self, attempt: Attempt, *, chain: bool, terminal: bool, leased: bool) -> Any:
        """Slots are released after the outcome commit: handed over / waiters woken for a run whose caps
        were in use; otherwise (no limits, or limits with room to spare) the plain lease is dropped — by the
        monitor's next poll when the run ended terminally (it never takes a lease again), else now (a retry
        may soon take one). An attempt that ended before its lease was written has none to drop."""
        if attempt.hands_off:
            return self._handoff.end_attempt(attempt, chain=chain)
        if not leased:
            return None
        if terminal:
            self._monitor.release_later(attempt.run_id, attempt.job_id, attempt.concurrency_key)
        else:
            self._release_lease(attempt)
        return None

    def _plan(self, attempt: Attempt, deadline: float) -> CallPlan:
        return CallPlan(run_id=attempt.run_id, job_id=attempt.job_id, attempt=attempt.attempt,
                        body=attempt.payload.encode("utf-8"), endpoint_url=attempt.settings.endpoint_url,
                        fallback_endpoint_url=attempt.settings.fallback_endpoint_url,
                        webhook_secrets=self._settings.secret_box.open_all(*attempt.webhook_secrets),
                        traceparent=attempt_traceparent(attempt.traceparent), deadline=deadline,
                        timeout_secs=attempt.timeout_secs, user_agent=self._user_agent, debug=attempt.debug_mode)

    def _record(self, attempt: Attempt, call: AttemptCall | None, trace: TraceClock) -> Handled:
        end = self._attempt_end(attempt, call, trace)
        policy = RetryPolicy(attempt.max_attempts, attempt.settings.retry_strategy,
                             attempt.settings.retry_delays_secs)
        updated = self._store(attempt.run_id, plan_end(end, policy=policy, now=self._clock(), rng=self._rng))
        outcome = end.outcome
        status = updated.value if updated is not None else "discarded"
        observe_attempt(outcome.error_class or outcome.kind, (end.duration_ms or 0) / 1000)
        log.info("attempt finished", extra={
            "run_id": attempt.run_id, "job_id": attempt.job_id, "attempt": attempt.attempt, "status": status,
            "outcome": outcome.kind, "error_class": outcome.error_class, "http_status": outcome.http_status,
            "used_fallback": end.used_fallback, "duration_ms": end.duration_ms})
        return Handled(status, attempt.run_id, attempt.attempt)

    def _store(self, run_id: str, plan: PlannedEnd) -> RunStatus | None:
        """The planned end as one conditional move (status ``executing`` and the attempt number)."""
        moved = self._recorder.move(run_id, plan.to, now=self._clock(), from_=RunStatus.EXECUTING,
                                    values=plan.values, where=plan.where, events=plan.events)
        return plan.to if moved else None

    def _attempt_end(self, attempt: Attempt, call: AttemptCall | None, trace: TraceClock) -> AttemptEnd:
        recorded = time.monotonic()
        if call is None:
            outcome = Outcome(NON_RETRYABLE, "internal", "internal: unexpected error while calling the endpoint")
            return AttemptEnd(attempt=attempt.attempt, outcome=outcome,
                              duration_ms=_ms(trace.acquired, trace.responded),
                              execution_trace=trace.trace(None, recorded))
        result, truncated = result_of(call.result) if call.outcome.is_success else (None, False)
        return AttemptEnd(
            attempt=attempt.attempt, outcome=call.outcome, used_fallback=call.used_fallback,
            duration_ms=_ms(trace.acquired, trace.responded), result=result, result_truncated=truncated,
            retry_after_secs=call.result.retry_after_secs, execution_trace=trace.trace(call.result.timings, recorded),
            extra_events=call.debug_events,
        )

    def _release_lease(self, attempt: Attempt) -> None:
        try:
            self._limits.release(attempt.run_id, attempt.job_id, attempt.concurrency_key)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("lease release failed; it will expire", extra={
                "run_id": attempt.run_id, "job_id": attempt.job_id, "error": type(exc).__name__})


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else max(0, round((end - start) * 1000))
