"""Retention: finished runs older than the deployment's ``SLUICE_RETENTION_DAYS`` are deleted, with their
events and webhook deliveries, a small batch at a time (the scheduler's ``prune_retention`` task).

A run is old once its ``finished_at`` is before the cutoff; runs that have not finished (queued, delayed,
waiting, executing) are never pruned, however old. The walk goes job by job (``ix_runs_job_finished``
answers "this job's runs finished before the cutoff" without reading the others), ``JOBS_PER_PASS`` jobs and
at most ``limit`` runs per pass, from a cursor the caller keeps: each pass is one short transaction, so
triggering and workers never wait behind a long delete, and a backlog of a million old runs is worked
off over many passes.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Job, Run, RunEvent
from shared.runs.status import TERMINAL

PRUNE_BATCH = 1000  # runs deleted per pass (their events and deliveries with them)
JOBS_PER_PASS = 100
_FINISHED = [status.value for status in TERMINAL]


def prune_finished_runs(session: Session, cutoff: datetime, after_job: str | None, *,
                        limit: int = PRUNE_BATCH) -> tuple[int, str | None]:
    """Delete up to ``limit`` runs finished before ``cutoff`` among the next ``JOBS_PER_PASS`` jobs after
    ``after_job`` (in id order), with their events and webhook deliveries; ``(deleted, cursor)``. The
    cursor stays put while a pass fills its batch (those jobs may hold more), moves past the jobs once
    they are done, and is ``None`` after the last job (the next pass starts over)."""
    jobs = sa.select(Job.id).order_by(Job.id).limit(JOBS_PER_PASS)
    if after_job is not None:
        jobs = jobs.where(Job.id > after_job)
    job_ids = list(session.scalars(jobs))
    if not job_ids:
        return 0, None
    run_ids = list(session.scalars(
        sa.select(Run.id).where(Run.job_id.in_(job_ids), Run.finished_at.is_not(None), Run.finished_at < cutoff,
                                Run.status.in_(_FINISHED))
        .limit(limit).with_for_update(skip_locked=True)))
    if run_ids:
        # Events have no foreign key to runs (migration 0003); deliveries go with their run (ON DELETE CASCADE).
        session.execute(sa.delete(RunEvent).where(RunEvent.run_id.in_(run_ids)))
        session.execute(sa.delete(Run).where(Run.id.in_(run_ids)).execution_options(synchronize_session=False))
    if len(run_ids) >= limit:
        return len(run_ids), after_job
    return len(run_ids), job_ids[-1] if len(job_ids) == JOBS_PER_PASS else None
