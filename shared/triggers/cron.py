"""Cron runs for many jobs sharing one tick, in a few statements (CONTRACT §6.3, §6.6).

The one way cron runs are created, built from the row builders every other run uses
(``shared.runs.creation.build_run_row``, ``shared.runs.creation.insert_run_rows``). With 1,000 jobs due on
the same minute the scheduler spends one transaction, one dependency query, one
``INSERT … ON CONFLICT DO NOTHING`` (paged by SQLAlchemy's insertmanyvalues) and one events insert, instead
of a thousand of each.

Replicas: the partial unique index ``uq_runs_cron_tick`` makes the insert of a (job, tick) that already
has a run do nothing, so a second scheduler replica firing the same tick creates nothing. Rows are
inserted in job-id order, which every replica uses, so two replicas inserting the same batch wait on each
other's keys in the same order and cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Job, JobDependency
from shared.dependencies.gating import gate_new_runs
from shared.ids import uuid7s
from shared.runs.creation import (
    CRON_ACTOR,
    RunInputs,
    build_run_row,
    initial_status,
    insert_run_rows,
    job_ttl,
)
from shared.runs.effects import Effects
from shared.schedules.cron import tick_key


def cron_inputs(job: Job, tick: datetime) -> RunInputs:
    """What a cron run of ``job`` at ``tick`` carries besides the job's own settings (§6.6)."""
    return RunInputs(created_by=CRON_ACTOR, triggered_by="cron", metadata=dict(job.default_run_metadata or {}),
                     tags=dict(job.tags or {}), idempotency_key=tick_key(job.id, tick), scheduled_at=tick,
                     ttl_secs=job_ttl(job))


def _jobs_with_edges(session: Session, job_ids: Sequence[str]) -> set[str]:
    if not job_ids:
        return set()
    return set(session.scalars(sa.select(JobDependency.job_id).where(JobDependency.job_id.in_(job_ids))
                               .distinct()))


def create_cron_runs(session: Session, jobs: Sequence[Job], tick: datetime, now: datetime,
                     effects: Effects) -> list[dict[str, Any]]:
    """Create the run of ``tick`` for each of ``jobs``; return the rows actually inserted.

    A job whose tick already has a run (another replica, an earlier attempt) is silently left out.
    Dependencies gate each run (§5.14): jobs with edges are gated one by one under their dependency lock,
    the others are known to hold with one query. Queued runs are appended to ``effects.enqueue``; the
    caller owns the transaction and commits, then enqueues.
    """
    ordered = sorted(jobs, key=lambda job: job.id)
    if not ordered:
        return []
    gated = _jobs_with_edges(session, [job.id for job in ordered])
    rows: list[dict[str, Any]] = []
    for job, run_id in zip(ordered, uuid7s(len(ordered)), strict=True):
        inputs = cron_inputs(job, tick)
        holds = True
        if job.id in gated:
            holds = gate_new_runs(session, job.id, [inputs.correlation])[0].holds
        rows.append(build_run_row(job, inputs, initial_status(holds, tick, now), now, run_id=run_id,
                                  expiry_start=tick))
    return insert_run_rows(session, rows, effects, skip_existing=True)
