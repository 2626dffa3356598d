"""The end of one attempt (CONTRACT §5.3, §5.4, §5.5): one conditional transition out of ``executing``.

Shared by the worker (recording a call's outcome) and the reaper (recording a lost worker), so the retry
rules live in one place:

* success → ``completed`` (``result`` stored, ``error``/``error_class`` cleared);
* retryable with attempts left → ``delayed`` with ``next_retry_at`` = now + max(delay(n), Retry-After),
  event ``retry_scheduled``;
* retryable, none left → by the last cause (``timed_out``, ``crashed`` for a lost worker, else ``failed``);
* not retryable → ``failed``, or ``system_failed`` for a Sluice-side (``internal``) failure.

Every end writes ``attempt_finished``. The update is conditional on the status **and** the attempt
number: the outcome of an attempt the reaper already gave up on, or of a canceled run, is discarded
(``None`` is returned) instead of overwriting a newer attempt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from shared.clock import format_ts
from shared.runs.effects import Effects
from shared.runs.moves import move
from shared.runs.retries import Outcome, final_status_for, retry_delay_secs
from shared.runs.status import RunStatus


@dataclass(frozen=True)
class AttemptEnd:
    """How attempt ``attempt`` ended. ``execution_trace`` ``None`` leaves the stored trace alone."""

    attempt: int
    outcome: Outcome
    used_fallback: bool = False
    duration_ms: int | None = None
    result: Any = None
    result_truncated: bool = False
    retry_after_secs: int | None = None
    execution_trace: dict[str, Any] | None = None
    extra_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class RetryPolicy:
    """The resolved retry settings of the run (``max_attempts`` already includes the override)."""

    max_attempts: int
    strategy: str
    delays_secs: tuple[int, ...]


def clean_text(text: str | None) -> str | None:
    """PostgreSQL text and JSONB cannot hold U+0000; endpoint bodies can. Replace it with U+FFFD."""
    return None if text is None else text.replace("\x00", "\ufffd")


@dataclass(frozen=True)
class PlannedEnd:
    """Where an attempt's end takes the run: status, columns and events (``plan_end``)."""

    attempt: int
    to: RunStatus
    values: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]

    @property
    def where(self) -> dict[str, Any]:
        """The end applies only to the attempt it is the end of: a reaped or canceled attempt's late outcome,
        or a newer attempt's row, is never overwritten (with status ``executing``, the move's condition)."""
        return {"attempt": self.attempt}


def plan_end(end: AttemptEnd, *, policy: RetryPolicy, now: datetime,
             rng: random.Random | None = None) -> PlannedEnd:
    """Apply §5.3–5.4 to ``end``: the new status, the columns to set and the events to write."""
    outcome = end.outcome
    error = clean_text(outcome.error)
    finished = {
        "attempt": end.attempt, "outcome": outcome.kind, "http_status": outcome.http_status,
        "error_class": outcome.error_class, "error": error, "used_fallback": end.used_fallback,
        "duration_ms": end.duration_ms, "result_truncated": end.result_truncated,
    }
    events: list[tuple[str, dict[str, Any]]] = [*end.extra_events, ("attempt_finished", finished)]
    values: dict[str, Any] = {}
    if end.execution_trace is not None:
        values["execution_trace"] = end.execution_trace
    if outcome.is_success:
        to = RunStatus.COMPLETED
        values.update(result=end.result, error=None, error_class=None)
    else:
        values.update(error=error, error_class=outcome.error_class)
        if outcome.is_retryable and end.attempt < policy.max_attempts:
            delay = retry_delay_secs(policy.strategy, list(policy.delays_secs), end.attempt, rng)
            wait = max(delay, float(end.retry_after_secs or 0))
            next_retry_at = now + timedelta(seconds=wait)
            to = RunStatus.DELAYED
            values["next_retry_at"] = next_retry_at
            events.append(("retry_scheduled", {
                "attempt": end.attempt, "delay_secs": round(delay, 3), "retry_after_secs": end.retry_after_secs,
                "next_retry_at": format_ts(next_retry_at),
            }))
        elif outcome.is_retryable:
            to = RunStatus(final_status_for(outcome.error_class))
        elif outcome.error_class == "internal":
            to = RunStatus.SYSTEM_FAILED
        else:
            to = RunStatus.FAILED
    return PlannedEnd(end.attempt, to, values, events)


def finish_attempt(session: Session, run_id: str, end: AttemptEnd, *, policy: RetryPolicy, now: datetime,
                   effects: Effects, rng: random.Random | None = None) -> RunStatus | None:
    """Record ``end`` if ``run_id`` is still ``executing`` attempt ``end.attempt`` and return the run's new
    status; else return ``None`` (the outcome is discarded). The caller owns the transaction (and releases
    the attempt's slots after committing)."""
    plan = plan_end(end, policy=policy, now=now, rng=rng)
    moved = move(session, run_id, plan.to, now=now, effects=effects, from_=(RunStatus.EXECUTING,), values=plan.values,
                 where=plan.where, events=plan.events)
    return None if moved is None else plan.to
