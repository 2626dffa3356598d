"""Test data written straight to the database (no HTTP): jobs with their version snapshot, edges, runs.

Tests use these instead of the jobs endpoints so each area can be tested on its own. Every function
takes a session and flushes; the caller commits.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.db.models import Job, JobDependency, JobVersion, Run
from shared.ids import new_version_id, uuid7
from shared.jobs.config import DEFAULTS

# Every writable Job field but name and slug, with the value a job gets when it is not given.
JOB_DEFAULTS: dict[str, Any] = {**DEFAULTS, "endpoint_url": "http://127.0.0.1:9/endpoint"}


def make_job(session: Session, project_id: str = "proj-a", *, slug: str | None = None,
             now: datetime | None = None, **fields: Any) -> Job:
    """A job (version 1) with its full snapshot; ``fields`` override any writable field."""
    now = now or utcnow()
    unknown = set(fields) - set(JOB_DEFAULTS) - {"name"}
    if unknown:
        raise TypeError(f"unknown job fields: {sorted(unknown)}")
    slug = slug or f"job-{uuid7()[-12:]}"
    # Copied: the defaults hold dicts and lists, which no two jobs may share.
    config = {**copy.deepcopy(JOB_DEFAULTS), "name": fields.pop("name", slug), "slug": slug, **fields}
    version_id = new_version_id()
    job = Job(id=uuid7(), project_id=project_id, version=1, version_id=version_id, created_by="apikey:test",
              updated_by="apikey:test", created_at=now, updated_at=now, schedule_changed_at=now, **config)
    session.add(job)
    session.flush()
    session.add(JobVersion(id=version_id, job_id=job.id, version=1, config=dict(config),
                           created_by="apikey:test", created_at=now))
    session.flush()
    return job


def bump_version(session: Session, job: Job, now: datetime | None = None, **changes: Any) -> str:
    """Give the live job a new version (its next number, a full snapshot) with ``changes`` applied, leaving
    the ``job`` object as it was; the new version's id."""
    now = now or utcnow()
    current = session.execute(sa.select(JobVersion).where(JobVersion.id == job.version_id)).scalar_one()
    version, version_id = job.version + 1, new_version_id()
    session.add(JobVersion(id=version_id, job_id=job.id, version=version, config={**current.config, **changes},
                           created_by="apikey:test", created_at=now))
    session.flush()
    session.execute(sa.update(Job).where(Job.id == job.id).values(version=version, version_id=version_id, **changes)
                    .execution_options(synchronize_session=False))
    return version_id


def make_dependency(session: Session, job: Job, upstream: Job, condition: str = "completed",
                    now: datetime | None = None) -> JobDependency:
    edge = JobDependency(id=uuid7(), project_id=job.project_id, job_id=job.id, depends_on_job_id=upstream.id,
                         condition=condition, created_at=now or utcnow())
    session.add(edge)
    session.flush()
    return edge


def make_run(session: Session, job: Job, *, status: str = "queued", now: datetime | None = None,
             **fields: Any) -> Run:
    """A run row in any status, bypassing triggering (for list, cancel, replay and dependency tests)."""
    now = now or utcnow()
    values: dict[str, Any] = {
        "id": uuid7(), "job_id": job.id, "project_id": job.project_id, "status": status, "attempt": 0,
        "payload": "{}", "payload_hash": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "run_metadata": {}, "triggered_by": "manual", "priority": 0, "job_version": job.version,
        "job_version_id": job.version_id, "retry_backoff": job.retry_strategy, "tags": dict(job.tags or {}),
        "created_by": "apikey:test", "created_at": now,
        "queued_at": now if status == "queued" else None,
    }
    if status in {"completed", "failed", "timed_out", "crashed", "canceled", "expired", "system_failed"}:
        values["finished_at"] = now
    values.update(fields)
    run = Run(**values)
    session.add(run)
    session.flush()
    return run
