"""From a claimed run to a started attempt, or a reason not to start (CONTRACT §5.1 steps 3–8).

In the claim transaction, with the run row locked: expiry at pick time (§5.10), execution settings by
version policy (§5.13), execution window (§5.7), concurrency leases and rate limits in one atomic Redis
script (§5.8, §5.9), then the ``queued → executing`` transition. Every refusal before the start is a
re-delay that uses no attempt; every Sluice-side impossibility is ``system_failed``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from shared.clock import format_ts
from shared.config import Settings
from shared.db.models import Job, Run
from shared.egress.addresses import strip_userinfo
from shared.limits.limiter import LimitDecision, LimitRequest, Limits, rate_rules_for
from shared.metrics import observe_redelay
from shared.runs.execution_settings import (
    ExecutionSettings,
    SettingsUnresolvable,
    effective_max_attempts,
    effective_timeout_secs,
    resolve_execution_settings,
)
from shared.runs.moves import move_run, supports_moves
from shared.runs.transitions import Effects, RunStatus, status_columns, transition
from shared.schedules.cron import CronError, CronSpec, is_minute_open, next_open_minute, parse_cron

log = logging.getLogger("sluice.worker")

_QUEUED = frozenset({RunStatus.QUEUED})
# The claim holds the row lock and read status `queued`: transitions skip their own locking read.
_FROM_CLAIM: dict[str, Any] = {"expected": _QUEUED, "locked_status": RunStatus.QUEUED}
EXPIRED_ERROR = "expired: not started before expires_at"


@dataclass(frozen=True)
class Started:
    """An attempt that just started: everything the call and the record step need."""

    run: Run  # the row as updated by the start transition (attempt already incremented)
    settings: ExecutionSettings
    max_attempts: int
    timeout_secs: int
    lease_ms: int
    webhook_secret: str | None  # always the live job's (§5.13)


@dataclass(frozen=True)
class NotStarted:
    """What happened instead: ``expired``, ``system_failed``, ``redelayed`` or ``lost`` (claim race)."""

    action: str
    detail: str | None = None
    run_id: str | None = None  # set where the caller does not know which run was picked (worker.limited_start)


@lru_cache(maxsize=1024)
def _window_spec(expression: str) -> CronSpec:
    return parse_cron(expression)


def admit(session: Session, run: Run, job: Job, *, now: datetime, settings: Settings, limits: Limits,
          effects: Effects, rng: random.Random,
          hand_over: tuple[str, str | None] | None = None) -> Started | NotStarted:
    """Apply §5.1 steps 3–8 to the locked ``run``; the caller commits (and applies ``effects``).

    ``hand_over``: (run id, concurrency key) of an ended attempt of the same job whose leases pass to this
    run (``worker.handoff``); they are dropped by the limit script whatever its decision. A refusal before
    the limit check (expiry, window, settings) leaves them to the caller.
    """
    if run.attempt == 0 and run.expires_at is not None and run.expires_at <= now:
        transition(session, run.id, RunStatus.EXPIRED, now=now, effects=effects, **_FROM_CLAIM,
                   values={"error": EXPIRED_ERROR, "error_class": None})
        return NotStarted("expired")
    try:
        resolved = resolve_execution_settings(session, run, job)
        window_until = _window_closed_until(job, now)
    except (SettingsUnresolvable, CronError, ValueError) as exc:
        reason = f"internal: cannot resolve execution settings: {exc}"
        transition(session, run.id, RunStatus.SYSTEM_FAILED, now=now, effects=effects, **_FROM_CLAIM,
                   values={"error": reason, "error_class": "internal"})
        return NotStarted("system_failed", reason)
    if window_until is not None:
        limit = {"kind": "execution_window", "execution_window_cron": job.execution_window_cron,
                 "timezone": job.timezone}
        return _redelay(session, run, "window", window_until, limit, now=now, effects=effects)

    timeout_secs = effective_timeout_secs(run, resolved)
    lease_ms = (timeout_secs + settings.lease_margin_secs) * 1000
    # A concurrency refusal also registers the run as a slot waiter, in the same script: a release wakes it.
    decision = limits.acquire(_limit_request(run, job, lease_ms, hand_over))
    if not decision.admitted:
        until = retry_at(decision, now, settings, rng)
        return _redelay(session, run, decision.reason or "concurrency", until, decision.limit, now=now,
                        effects=effects)

    started = _start(session, run, resolved, now=now, effects=effects)
    if started is None:
        # Someone else moved the run first (only possible if the row lock was bypassed). The lease is
        # keyed by run id and may be the winner's: leave it (shared.limits.limiter caveat), it expires anyway.
        log.warning("start lost the race; message dropped", extra={"run_id": run.id, "job_id": run.job_id})
        return NotStarted("lost")
    return Started(run=started, settings=resolved, max_attempts=effective_max_attempts(run, resolved),
                   timeout_secs=timeout_secs, lease_ms=lease_ms, webhook_secret=job.webhook_secret)


def _start(session: Session, run: Run, resolved: ExecutionSettings, *, now: datetime,
           effects: Effects) -> Run | None:
    """``queued → executing`` with the next attempt number and its ``attempt_started`` event.

    On PostgreSQL one statement (``shared.runs.moves``) moves the row and writes both events; the claimed
    ``run`` object then gets the new column values as loaded state, so the commit flushes nothing.
    """
    attempt = run.attempt + 1
    values = {"attempt": attempt, "started_at": now, "heartbeat_at": now, "next_retry_at": None}
    events = [("attempt_started", {"attempt": attempt, "job_version": resolved.version,
                                   "endpoint_url": strip_userinfo(resolved.endpoint_url)})]
    if not supports_moves(session):
        return transition(session, run.id, RunStatus.EXECUTING, now=now, effects=effects, **_FROM_CLAIM,
                          values=values, events=events)
    if move_run(session, run.id, from_status=RunStatus.QUEUED, to=RunStatus.EXECUTING, now=now,
                effects=effects, values=values, events=events) is None:
        return None
    for name, value in status_columns(RunStatus.EXECUTING, values, now).items():
        set_committed_value(run, name, value)
    return run


def _window_closed_until(job: Job, now: datetime) -> datetime | None:
    """``None`` when the current minute is open (or there is no window), else the next open minute."""
    if not job.execution_window_cron:
        return None
    spec = _window_spec(job.execution_window_cron)
    if is_minute_open(spec, job.timezone, now):
        return None
    return next_open_minute(spec, job.timezone, now)


def _limit_request(run: Run, job: Job, lease_ms: int, hand_over: tuple[str, str | None] | None) -> LimitRequest:
    payload: Any = None
    if job.rate_limit_keys:  # the payload is parsed only when a key may be looked up in it
        payload = json.loads(run.payload)
    rules = rate_rules_for(job.id, job.rate_limit_max, job.rate_limit_window_secs, job.rate_limit_keys or [],
                           run.run_metadata or {}, run.tags or {}, payload)
    return LimitRequest(run_id=run.id, job_id=job.id, max_concurrency=job.max_concurrency,
                        concurrency_key=run.concurrency_key, max_concurrency_per_key=job.max_concurrency_per_key,
                        lease_ms=lease_ms, rate_rules=rules, waiter_priority=run.priority, hand_over=hand_over)


def retry_at(decision: LimitDecision, now: datetime, settings: Settings, rng: random.Random) -> datetime:
    """Rate limits: the decision's earliest instant with room. Concurrency: now + slot retry + ≤ 1 s jitter."""
    if decision.reason == "rate_limit" and decision.retry_at_ms is not None:
        return max(now, datetime.fromtimestamp(decision.retry_at_ms / 1000, UTC))
    return now + timedelta(seconds=settings.slot_retry_secs + rng.random())


def _redelay(session: Session, run: Run, reason: str, until: datetime, limit: dict[str, Any], *,
             now: datetime, effects: Effects) -> NotStarted:
    """``queued → delayed`` with ``scheduled_at`` = ``until`` and event ``redelayed``; no attempt used.

    One statement on PostgreSQL (``shared.runs.moves``): under a backlog behind a cap most claims end here,
    every ``SLUICE_SLOT_RETRY_SECS`` for every waiting run (§5.8), so this path's cost is the backlog's.
    """
    values = {"scheduled_at": until}
    events = [("redelayed", {"reason": reason, "until": format_ts(until), "limit": limit})]
    if supports_moves(session):
        move_run(session, run.id, from_status=RunStatus.QUEUED, to=RunStatus.DELAYED, now=now, effects=effects,
                 values=values, events=events)
    else:
        transition(session, run.id, RunStatus.DELAYED, now=now, effects=effects, **_FROM_CLAIM, values=values,
                   events=events)
    observe_redelay(reason)
    return NotStarted("redelayed", reason)
