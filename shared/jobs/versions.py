"""Job versions (CONTRACT §2.4, §3.7): immutable full snapshots of a job's configuration.

Version 1 is written at create and clone, each changing PATCH writes the next. The snapshot holds every
W field, the webhook secret included (it is masked only when rendered). Versions go only with their job
(``ON DELETE CASCADE``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import JobVersion

VERSION_ID_RE = re.compile(r"^ver_[0-9a-z]{12}$")
VERSIONS: sa.Table = JobVersion.__table__  # type: ignore[assignment]


def version_record(*, version_id: str, job_id: str, version: int, config: Mapping[str, Any], actor: str,
                   now: datetime) -> dict[str, Any]:
    return {"id": version_id, "job_id": job_id, "version": version, "config": dict(config),
            "created_by": actor, "created_at": now}


def insert_versions(session: Session, records: list[dict[str, Any]]) -> None:
    if records:
        session.execute(sa.insert(VERSIONS), records)


def list_versions(session: Session, job_id: str, *, limit: int, before_version: int | None = None
                  ) -> list[Mapping[str, Any]]:
    """Newest first (``version`` desc), strictly below ``before_version`` when given."""
    query = sa.select(VERSIONS).where(VERSIONS.c.job_id == job_id)
    if before_version is not None:
        query = query.where(VERSIONS.c.version < before_version)
    rows = session.execute(query.order_by(VERSIONS.c.version.desc()).limit(limit)).mappings().all()
    return cast(list[Mapping[str, Any]], rows)


def find_version(session: Session, job_id: str, version_id: str) -> Mapping[str, Any] | None:
    """The version ``version_id`` if it belongs to ``job_id`` (a version of another job is not found)."""
    if not VERSION_ID_RE.fullmatch(version_id):
        return None
    row = session.execute(
        sa.select(VERSIONS).where(VERSIONS.c.id == version_id, VERSIONS.c.job_id == job_id)
    ).mappings().first()
    return cast(Mapping[str, Any] | None, row)
