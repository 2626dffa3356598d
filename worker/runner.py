"""One attempt, end to end (CONTRACT §5.1): claim, checks, limits, call, record.

``Runner.handle(run_id)`` is what a ``dispatch_run`` message does. It takes every dependency as an
argument (session factory, limits, broker, settings, clock, the HTTP ``post`` function, the attempt
monitor) so tests drive it directly against real PostgreSQL, Redis and HTTP servers.

Transactions per attempt: (1) claim + admission + start, committed before the call so the run shows
``executing`` and nothing is locked while the endpoint works; (2) the outcome, conditional on status and
attempt. Slots are released after (2) commits — on every exit from ``executing``, including a discarded
outcome (canceled or reaped run) and a Sluice-side failure.

On PostgreSQL each of the two is, in the common case, a single statement run as its own transaction
(``worker.direct``): (1) ``worker.fast_start`` when no check can refuse the best ready run, (2)
``shared.runs.attempts.record_end_alone`` when no terminal hook is due. Otherwise — limits, a window, a pinned
older version, expiry, a webhook or dependents — the same steps run in a ``Session`` (``claim_ready_run``
+ ``admit``; ``record_end``).
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
from shared.db.engine import transaction
from shared.egress.addresses import resolve_checked
from shared.limits.limiter import Limits
from shared.metrics import observe_attempt
from shared.runs.attempts import AttemptEnd, PlannedEnd, RetryPolicy, plan_end, record_end, record_end_alone
from shared.runs.commit import commit_and_apply
from shared.runs.execution_settings import ExecutionSettings, SettingsUnresolvable, live_settings
from shared.runs.retries import NON_RETRYABLE, Outcome
from shared.runs.transitions import Effects, RunStatus, is_terminal
from worker.admission import NotStarted, Started, admit
from worker.call import AttemptCall, CallPlan, PostFunction, perform_call
from worker.claim import claim_ready_run, hold_if_disabled
from worker.direct import DirectStatements
from worker.fast_start import FastClaim
from worker.handoff import CHAIN_SECS, SlotHandOff, Successor
from worker.heartbeat import AttemptMonitor, InFlight
from worker.http import CallAborted, Resolver, post, user_agent
from worker.leases import LeaseWriter
from worker.limited_start import DirectStarter
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


@dataclass(frozen=True)
class Attempt:
    """A started attempt: what the call, the record step and the release need (from either start path)."""

    run_id: str
    job_id: str
    attempt: int
    concurrency_key: str | None
    payload: str
    debug_mode: bool
    settings: ExecutionSettings
    max_attempts: int
    timeout_secs: int
    webhook_secret: str | None  # always the live job's (§5.13)
    # Started through the limit script (checked path, or worker.limited_start): its end may hand the slot to
    # a waiting run (worker.handoff). False for a run of a job without limits (worker.fast_start), or one
    # started with room to spare (``LimitDecision.roomy``): nobody is waiting for its slot.
    hands_off: bool = True

    @classmethod
    def of(cls, started: Started) -> Attempt:
        run = started.run
        return cls(run.id, run.job_id, run.attempt, run.concurrency_key, run.payload, run.debug_mode,
                   started.settings, started.max_attempts, started.timeout_secs, started.webhook_secret)

    @classmethod
    def of_claim(cls, fast: FastClaim, settings: ExecutionSettings) -> Attempt:
        """A run started on the direct connection (worker.fast_start, worker.limited_start, worker.handoff_start)."""
        assert fast.attempt is not None
        return cls(fast.run_id, fast.job_id, fast.attempt, fast.concurrency_key, fast.payload, fast.debug_mode,
                   settings, fast.max_attempts_override or settings.max_attempts,
                   fast.timeout_secs_override or settings.timeout_secs, fast.webhook_secret,
                   fast.limits is not None and not fast.release_late)


class Runner:
    """Handles ``dispatch_run`` messages; thread-safe (one per worker process, shared by its threads)."""

    def __init__(self, *, session_factory: sessionmaker[Session], limits: Limits, broker: Any,
                 settings: Settings, monitor: AttemptMonitor, clock: Callable[[], datetime] = utcnow,
                 post_function: PostFunction = post, resolve: Resolver | None = None,
                 rng: random.Random | None = None, stopping: Callable[[], bool] = lambda: False,
                 direct: DirectStatements | bool | None = True) -> None:
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
        # True: single-statement transactions where the session factory's database allows them.
        self._direct = (DirectStatements.for_engine(session_factory.kw.get("bind")) if direct is True
                        else direct or None)
        self._leases = LeaseWriter(limits.scripts)  # the lease of a run started by worker.fast_start
        self._starter = (DirectStarter(self._direct, limits=limits, settings=settings, rng=self._rng)
                         if self._direct is not None else None)
        self._stopping = stopping  # no more hand-offs once the worker is stopping (worker.handoff)
        self._handoff = SlotHandOff(session_factory=session_factory, limits=limits, broker=broker, settings=settings,
                                    clock=clock, rng=self._rng, direct=self._direct)

    def _checked_resolver(self, url: str) -> tuple[str, int, list[str]]:
        return resolve_checked(url, allow_private=self._settings.allow_private_endpoints)

    def handle(self, run_id: str) -> Handled:
        """Claim the best ready run (not necessarily ``run_id``) and run one attempt of it."""
        picked = time.monotonic()
        now = self._clock()
        if self._starter is not None:
            fast = self._starter.start(run_id, now)
            if fast is None:
                return self._nothing_claimable(run_id, now)
            if isinstance(fast, NotStarted):
                return Handled(fast.action, fast.run_id)
            if fast.attempt is not None:
                return self._fast_started(fast, TraceClock(picked=picked, picked_wall=now, queued_at=fast.queued_at))
        return self._checked(run_id, picked, now)

    def _nothing_claimable(self, run_id: str, now: datetime) -> Handled:
        with transaction(self._session_factory) as session:
            held = hold_if_disabled(session, run_id, now)
        return Handled("held" if held else "idle", run_id)

    def _checked(self, run_id: str, picked: float, now: datetime) -> Handled:
        """§5.1 steps 1–8 in one transaction: claim, admission (limits in Redis), start."""
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
        return self._execute(Attempt.of(admission), trace)

    def _fast_started(self, fast: FastClaim, trace: TraceClock) -> Handled:
        """After ``DirectStarter.start``: the run is ``executing``. A run of a limited job holds the leases
        the limit script gave it; for a job without limits the lease recorded here only keeps
        ``slots_in_use`` true (a limit added later counts this attempt), it cannot refuse."""
        assert fast.attempt is not None
        try:
            settings = fast.settings or live_settings(fast.live, fast.version, fast.version_id)
        except SettingsUnresolvable as exc:  # only for job rows the API did not write: fail the attempt
            return self._fast_unresolvable(fast, trace, f"internal: cannot resolve execution settings: {exc}")
        attempt = Attempt.of_claim(fast, settings)
        if fast.limits is not None:
            trace.acquired = time.monotonic()
            return self._execute(attempt, trace)
        lease_ms = (attempt.timeout_secs + self._settings.lease_margin_secs) * 1000
        try:
            self._leases.record(fast.run_id, fast.job_id, fast.concurrency_key, lease_ms)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("lease not recorded (the job has no limits)", extra={
                "run_id": fast.run_id, "job_id": fast.job_id, "error": type(exc).__name__})
        trace.acquired = time.monotonic()
        return self._execute(attempt, trace)

    def _fast_unresolvable(self, fast: FastClaim, trace: TraceClock, reason: str) -> Handled:
        assert fast.attempt is not None
        end = AttemptEnd(attempt=fast.attempt, outcome=Outcome(NON_RETRYABLE, "internal", reason),
                         execution_trace=trace.trace(None, time.monotonic()))
        status = self._store(fast.run_id, plan_end(end, policy=RetryPolicy(1, "fixed", ()), now=self._clock()))
        log.error("run failed: settings unresolvable", extra={"run_id": fast.run_id, "job_id": fast.job_id,
                                                              "reason": reason})
        self._release_lease(fast.run_id, fast.job_id, fast.concurrency_key)
        return Handled(status.value if status is not None else "discarded", fast.run_id, fast.attempt)

    def _execute(self, attempt: Attempt, trace: TraceClock) -> Handled:
        """Run ``attempt``; while its end hands the slot straight to a waiting run (``worker.handoff``), run
        that one too, in this thread, for at most ``CHAIN_SECS``."""
        chain_until = time.monotonic() + CHAIN_SECS
        while True:
            handled, successor = self._run_attempt(attempt, trace, chain_until)
            if successor is None:
                return handled
            started, trace = successor
            if isinstance(started, Started):
                attempt = Attempt.of(started)
            else:  # started by worker.handoff_start, which validated its settings
                assert started.settings is not None
                attempt = Attempt.of_claim(started, started.settings)

    def _run_attempt(self, attempt: Attempt, trace: TraceClock,
                     chain_until: float) -> tuple[Handled, Successor | None]:
        flight = InFlight(run_id=attempt.run_id, job_id=attempt.job_id, attempt=attempt.attempt,
                          concurrency_key=attempt.concurrency_key,
                          deadline=(trace.acquired or time.monotonic()) + attempt.timeout_secs,
                          lease_margin_secs=self._settings.lease_margin_secs)
        self._monitor.register(flight)
        handled: Handled | None = None
        try:
            handled = self._call_and_record(attempt, trace, flight)
        finally:
            self._monitor.unregister(attempt.run_id)
            # Hand the slot on only after a normal end (never while an exception is on its way out).
            chain = handled is not None and not self._stopping() and time.monotonic() < chain_until
            successor = self._end(attempt, chain=chain, terminal=handled is not None and is_terminal(handled.action))
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

    def _end(self, attempt: Attempt, *, chain: bool, terminal: bool) -> Successor | None:
        """Slots are released after the outcome commit: handed over / waiters woken for a run started through
        the limit script; otherwise (no limits, or limits with room to spare) the plain lease is dropped — by
        the monitor's next poll when the run ended terminally (it never takes a lease again:
        worker.heartbeat), else now (a retry may soon take one)."""
        if attempt.hands_off:
            return self._handoff.end_attempt(attempt.run_id, attempt.job_id, attempt.concurrency_key, chain=chain)
        if terminal:
            self._monitor.release_later(attempt.run_id, attempt.job_id, attempt.concurrency_key)
        else:
            self._release_lease(attempt.run_id, attempt.job_id, attempt.concurrency_key)
        return None

    def _plan(self, attempt: Attempt, deadline: float) -> CallPlan:
        return CallPlan(run_id=attempt.run_id, job_id=attempt.job_id, attempt=attempt.attempt,
                        body=attempt.payload.encode("utf-8"), endpoint_url=attempt.settings.endpoint_url,
                        fallback_endpoint_url=attempt.settings.fallback_endpoint_url,
                        webhook_secret=attempt.webhook_secret, deadline=deadline,
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
        """Record the planned end: one statement when nothing else is due, else in a transaction."""
        now = self._clock()
        if self._direct is not None:
            stored = record_end_alone(self._direct.first, run_id, plan, now=now)
            if stored is not None:
                return stored
        effects = Effects()
        session = self._session_factory()
        try:
            updated = record_end(session, run_id, plan, now=now, effects=effects)
            commit_and_apply(session, effects, self._broker)
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        return updated

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

    def _release_lease(self, run_id: str, job_id: str, concurrency_key: str | None) -> None:
        try:
            self._limits.release(run_id, job_id, concurrency_key)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("lease release failed; it will expire", extra={
                "run_id": run_id, "job_id": job_id, "error": type(exc).__name__})


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else max(0, round((end - start) * 1000))
