"""In-worker slot hand-off: the thread whose attempt just ended starts the best waiting run itself.

A run refused for a concurrency slot is registered as a waiter by the limit script itself
(``shared.limits``, ``shared.limits.waiters``). When an attempt that holds limited slots ends (its outcome
committed), one script either drops its leases (nobody waits) or pops the best waiter and keeps them. The
thread then starts that waiter with the start statement (``worker.start``: woken ``delayed → queued`` and
started in one statement, every admission rule checked) and the ended attempt's leases *handed over* —
dropped inside the waiter's limit script, so the slot is never seen free by anyone else and the cap is never
exceeded — and runs its attempt right away, in the same thread. No promotion transaction, no message, no
fetch by another thread.

A popped run that cannot start now (started, canceled, in a retry back-off, its job disabled, a ready run of
higher priority, or a rule it fails) is left as it is and the next waiter popped; after ``MAX_POPS`` or on
any error the leases are released and waiters are woken the ordinary way (``SlotWaiters.wake``: promote and
enqueue). Every waiter keeps its ``scheduled_at`` retry as the safety net.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy.orm import Session, sessionmaker

from shared.limits.limiter import Limits
from shared.limits.waiters import MAX_POPS, SlotWaiters
from worker.attempt import Attempt
from worker.start import Starter

log = logging.getLogger("sluice.worker")

# A chain of hand-offs runs inside one dispatch message: stop chaining after this long, so that the thread
# goes back to its queue and no message stays unacknowledged for hours.
CHAIN_SECS = 1800


@dataclass(frozen=True)
class Successor:
    """The waiter started with a slot handed over, and when the hand-off picked it (for its trace)."""

    attempt: Attempt
    picked: float  # monotonic
    picked_wall: datetime
    acquired: float  # monotonic


class SlotHandOff:
    """Ends attempts and hands their slots over; thread-safe (one per runner)."""

    def __init__(self, *, starter: Starter, limits: Limits, session_factory: sessionmaker[Session], broker: Any,
                 clock: Callable[[], datetime]) -> None:
        self._starter = starter
        self._limits = limits
        self._session_factory = session_factory
        self._broker = broker
        self._clock = clock

    def end_attempt(self, attempt: Attempt, *, chain: bool) -> Successor | None:
        """After ``attempt``'s outcome is committed: with ``chain``, start the best run waiting for its slot
        and return it for this thread to execute; otherwise (or if none could start) release the slot and
        wake waiters the ordinary way. Never raises."""
        run_id, job_id, key = attempt.run_id, attempt.job_id, attempt.concurrency_key
        skipped: list[str] = []  # popped waiters that could not start here (a ready run of higher priority ...)
        try:
            for _ in range(MAX_POPS if chain else 0):
                waiter = self._limits.end_attempt(run_id, job_id, key, hand_over=True)
                if waiter is None:  # leases dropped, and nobody (else) was waiting for them
                    if skipped:
                        self._wake_skipped(job_id, key, skipped)
                    return None
                picked, now = time.monotonic(), self._clock()
                started = self._starter.start(waiter, now, hand_over=(run_id, key))
                if isinstance(started, Attempt):
                    return Successor(started, picked, now, time.monotonic())
                if started is None or started.action == "skipped":
                    skipped.append(waiter)
                else:
                    log.info("handed-over run not started", extra={
                        "run_id": waiter, "job_id": job_id, "action": started.action, "reason": started.detail})
            self._limits.release(run_id, job_id, key)
        except Exception as exc:  # a speed-up only: any failure falls back to release and wake
            log.warning("slot hand-off failed; the lease is released or expires, waiters retry", extra={
                "run_id": run_id, "job_id": job_id, "error": type(exc).__name__})
            try:
                self._limits.release(run_id, job_id, key)
            except (redis.exceptions.RedisError, OSError):
                return None  # the lease expires (timeout + margin); waiters retry at scheduled_at
        self._wake_skipped(job_id, key, skipped)
        return None

    def _wake_skipped(self, job_id: str, key: str | None, skipped: list[str]) -> None:
        """The slot is free: wake a waiter the ordinary way (promote and enqueue), those popped here first."""
        SlotWaiters(self._limits.client).wake([(job_id, key)], open_session=self._session_factory,
                                              broker=self._broker, popped=(skipped, self._clock()))
