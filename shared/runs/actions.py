"""Cancel and replay (CONTRACT §5.17, §7): single and bulk, project-scoped.

Cancel goes through the state machine (``canceled`` with ``error: "canceled"``, ``error_class`` null; the
terminal hooks queue the webhook and release dependents). An executing run is canceled in PostgreSQL at
once; its worker learns about it from a Redis flag set after the commit (``signal_canceled``, run by
``shared.runs.commit.commit_and_apply`` for every canceled attempt in ``Effects.canceled_attempts``: a
cancel, a bulk cancel or a forced job delete), which also frees the run's concurrency leases so the slot
is usable before the worker notices.
Replay creates a new run through ``shared.runs.creation``; the original is never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared import redis_keys
from shared.db.models import Job, Run
from shared.errors import Conflict, NotFound
from shared.ids import canonical_uuid
from shared.limits.limiter import Limits
from shared.runs.creation import create_replay_run
from shared.runs.effects import CanceledAttempt, Effects
from shared.runs.moves import move
from shared.runs.queries import get_project_run
from shared.runs.status import TERMINAL, RunStatus

log = logging.getLogger("sluice.runs")
CANCEL_FLAG_TTL_SECS = 86_400


@dataclass
class CancelResult:
    """Runs canceled by one call (the executing ones are also in ``Effects.canceled_attempts``)."""

    canceled: list[Run] = field(default_factory=list)


def _cancel(session: Session, run: Run, *, now: datetime, effects: Effects, result: CancelResult) -> Run | None:
    moved = move(session, run.id, RunStatus.CANCELED, now=now, effects=effects)
    if moved is None:
        return None
    session.refresh(run)
    result.canceled.append(run)
    if moved.old_status == RunStatus.EXECUTING.value:
        effects.canceled_attempts.append((run.id, run.job_id, run.concurrency_key))
        effects.wake_slots.append((run.job_id, run.concurrency_key))  # a waiter gets its slot
    return run


def cancel_run(session: Session, project_id: str, run_id: str, *, now: datetime, effects: Effects,
               result: CancelResult) -> Run:
    """Cancel one run (404 unknown, 409 ``run is already <status>`` when terminal)."""
    run = get_project_run(session, project_id, run_id)
    if run is None:
        raise NotFound("run not found")
    if run.status in TERMINAL:
        raise Conflict(f"run is already {run.status}")
    moved = _cancel(session, run, now=now, effects=effects, result=result)
    if moved is None:  # it became terminal between our read and the conditional update
        session.expire(run)
        raise Conflict(f"run is already {run.status}")
    return moved


def bulk_cancel(session: Session, project_id: str, run_ids: list[str], *, now: datetime, effects: Effects,
                result: CancelResult) -> list[dict[str, str | None]]:
    """§7 bulk cancel: one result per id, in order. Rows are locked in id order first so that concurrent
    bulk cancels (whose terminal hooks take further locks) cannot deadlock on each other's rows."""
    wanted = sorted({cid for cid in (canonical_uuid(r) for r in run_ids) if cid is not None})
    locked = {run.id: run for run in session.scalars(
        sa.select(Run).where(Run.id.in_(wanted), Run.project_id == project_id).order_by(Run.id).with_for_update())}
    results: list[dict[str, str | None]] = []
    for raw in run_ids:
        run = locked.get(canonical_uuid(raw) or "")
        if run is None:
            results.append({"id": raw, "status": None, "error": "not found"})
            continue
        if run.status not in TERMINAL:
            moved = _cancel(session, run, now=now, effects=effects, result=result)
            if moved is not None:
                locked[run.id] = moved
                results.append({"id": raw, "status": moved.status, "error": None})
                continue
            session.refresh(run)
        results.append({"id": raw, "status": run.status, "error": f"already {run.status}"})
    return results


def signal_canceled(client: redis.Redis, runs: list[CanceledAttempt]) -> None:
    """After the commit: flag each canceled executing run for its worker and free its leases.

    Best effort (the worker also checks the run's status when it records the outcome): a Redis failure
    is logged, never raised, because the cancel itself is already committed.
    """
    if not runs:
        return
    try:
        pipe = client.pipeline(transaction=False)
        for run_id, _, _ in runs:
            pipe.set(redis_keys.run_cancel(run_id), "1", ex=CANCEL_FLAG_TTL_SECS)
        pipe.execute()
        limits = Limits(client)
        for run_id, job_id, concurrency_key in runs:
            limits.release(run_id, job_id, concurrency_key)
    except (redis.exceptions.RedisError, OSError) as exc:
        log.warning("could not signal a canceled run to its worker", extra={
            "runs": len(runs), "error": type(exc).__name__})


class ReplaySkipped(Conflict):
    """409 for a replay that §7 refuses (original not terminal, or job disabled)."""


def replay_run(session: Session, project_id: str, run_id: str, *, actor: str, now: datetime,
               effects: Effects, traceparent: str | None = None) -> Run:
    """A new run repeating a terminal one (404 unknown; 409 not terminal or job disabled), in the trace of
    ``traceparent`` (an accepted header) or a new one."""
    original = get_project_run(session, project_id, run_id)
    if original is None:
        raise NotFound("run not found")
    if original.status not in TERMINAL:
        raise ReplaySkipped(f"run is {original.status}; only terminal runs can be replayed")
    job = session.get(Job, original.job_id)
    if job is None:
        raise NotFound("run not found")
    if not job.enabled:
        raise ReplaySkipped("job is disabled; enable it before replaying runs")
    return create_replay_run(session, original, job, actor=actor, now=now, effects=effects, traceparent=traceparent)


def bulk_replay(session: Session, project_id: str, run_ids: list[str], *, actor: str, now: datetime,
                effects: Effects) -> list[dict[str, str | None]]:
    """§7 bulk replay: each id handled like a single replay, independently, results in order."""
    results: list[dict[str, str | None]] = []
    for raw in run_ids:
        try:
            new = replay_run(session, project_id, raw, actor=actor, now=now, effects=effects)
        except NotFound:
            results.append({"original_run_id": raw, "new_run_id": None, "status": "not_found",
                            "error": "not found"})
        except ReplaySkipped as exc:
            results.append({"original_run_id": raw, "new_run_id": None, "status": "skipped",
                            "error": exc.message})
        else:
            results.append({"original_run_id": raw, "new_run_id": new.id, "status": "replayed", "error": None})
    return results
