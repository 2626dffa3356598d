"""Resolving ``{job}`` path values (§1.2): an id or a slug, in the caller's project only."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Job
from shared.errors import NotFound
from shared.ids import canonical_uuid


def find_job(session: Session, project_id: str, ref: str, *, for_update: bool = False) -> Job | None:
    """The job whose id (if ``ref`` parses as a UUID) or else slug is ``ref``, in ``project_id``."""
    candidates = []
    as_id = canonical_uuid(ref)
    if as_id is not None:
        candidates.append(Job.id == as_id)
    candidates.append(Job.slug == ref)
    for condition in candidates:
        query = sa.select(Job).where(Job.project_id == project_id, condition)
        if for_update:
            query = query.with_for_update()
        job = session.scalars(query).first()
        if job is not None:
            return job
    return None


def get_job(session: Session, project_id: str, ref: str, *, for_update: bool = False) -> Job:
    job = find_job(session, project_id, ref, for_update=for_update)
    if job is None:
        raise NotFound("job not found")
    return job
