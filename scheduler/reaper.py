"""The lost-worker reaper (CONTRACT §5.5): stale ``executing`` runs become failed attempts.

A worker refreshes ``heartbeat_at`` every ``SLUICE_HEARTBEAT_INTERVAL_SECS`` while an attempt runs. An
``executing`` run whose heartbeat is older than ``SLUICE_STALE_AFTER_SECS`` lost its worker (SIGKILL,
OOM, node loss): the attempt is recorded as a retryable ``internal`` failure
(``worker lost: no heartbeat for <n> s``), its slots are released and §5.4 applies — ``delayed`` with a
retry while attempts remain, else ``crashed``. The dead worker's late outcome, should it ever arrive, is
discarded because its update is conditional on status *and* attempt (``shared.runs.attempts``).

Run periodically by the scheduler's maintenance loop; the caller owns the transaction and the clock.
"""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import Job, Run
from shared.limits.limiter import Limits
from shared.runs.attempts import AttemptEnd, RetryPolicy, finish_attempt
from shared.runs.effects import Effects
from shared.runs.execution_settings import SettingsUnresolvable, effective_max_attempts, resolve_execution_settings
from shared.runs.retries import RETRYABLE, Outcome
from shared.runs.status import RunStatus

log = logging.getLogger("sluice.reaper")

REAP_BATCH = 200


def reap_stale_attempts(session: Session, now: datetime, settings: Settings, limits: Limits, effects: Effects,
                        *, batch: int = REAP_BATCH, rng: random.Random | None = None) -> list[str]:
    """Turn up to ``batch`` stale attempts into failed attempts; return the reaped run ids.

    Rows are taken with ``FOR UPDATE SKIP LOCKED`` (two reapers never fight over one run). Slots are
    released right after each transition, before the caller commits: the run is stale either way, and a
    lease that outlives a rolled-back reap would only expire on its own. Redis errors on release are
    logged, never raised (leases expire after the effective timeout + ``SLUICE_LEASE_MARGIN_SECS``).
    """
    cutoff = now - timedelta(seconds=settings.stale_after_secs)
    rows = session.execute(
        sa.select(Run, Job).join(Job, Job.id == Run.job_id)
        .where(Run.status == RunStatus.EXECUTING.value, Run.heartbeat_at < cutoff)
        .order_by(Run.heartbeat_at).limit(batch)
        .with_for_update(of=Run, skip_locked=True)
    ).all()
    reaped: list[str] = []
    for run, job in rows:
        silent_secs = int((now - (run.heartbeat_at or run.started_at or now)).total_seconds())
        end = AttemptEnd(attempt=run.attempt, outcome=Outcome(
            RETRYABLE, "internal", f"worker lost: no heartbeat for {silent_secs} s"))
        if finish_attempt(session, run.id, end, policy=_policy(session, run, job), now=now, effects=effects,
                          rng=rng) is None:
            continue
        reaped.append(run.id)
        log.warning("attempt reaped: worker lost", extra={"run_id": run.id, "job_id": run.job_id,
                                                           "attempt": run.attempt, "silent_secs": silent_secs})
        effects.wake_slots.append((run.job_id, run.concurrency_key))  # woken after the commit
        try:
            limits.release(run.id, run.job_id, run.concurrency_key)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("lease release failed; it will expire", extra={"run_id": run.id,
                                                                      "error": type(exc).__name__})
    return reaped


def _policy(session: Session, run: Run, job: Job) -> RetryPolicy:
    """The run's retry policy; unresolvable settings allow no further attempt (the run ends ``crashed``)."""
    try:
        resolved = resolve_execution_settings(session, run, job)
    except SettingsUnresolvable:
        return RetryPolicy(max_attempts=run.attempt, strategy="fixed", delays_secs=())
    return RetryPolicy(effective_max_attempts(run, resolved), resolved.retry_strategy, resolved.retry_delays_secs)


def next_stale_in(session: Session, now: datetime, settings: Settings) -> float | None:
    """Seconds until the oldest heartbeat of an ``executing`` run goes stale (≤ 0 if one is); ``None`` if no
    run executes. One lookup on ``ix_runs_executing_heartbeat``."""
    oldest = session.execute(sa.select(sa.func.min(Run.heartbeat_at))
                             .where(Run.status == RunStatus.EXECUTING.value)).scalar()
    if oldest is None:
        return None
    return (oldest + timedelta(seconds=settings.stale_after_secs) - now).total_seconds()
