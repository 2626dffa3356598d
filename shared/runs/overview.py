"""A project's runs at a glance: how many are in each status, and how late its cron runs were created.

Each figure is one statement served by an index: active runs by ``ix_runs_status_created`` (project, status),
recent runs by ``ix_runs_project_created``, a cron job's latest tick by ``uq_runs_cron_tick`` (a cron run's
idempotency key ends with its tick in sortable UTC, ``shared.schedules.cron.tick_key``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Run
from shared.runs.status import ACTIVE, RunStatus

ACTIVE_VALUES = sorted(s.value for s in ACTIVE)
ALL_VALUES = [s.value for s in RunStatus]


@dataclass(frozen=True)
class StatusCounts:
    """Runs of a project now in each active status, and runs created since ``since`` by status."""

    active: Mapping[str, int]
    recent: Mapping[str, int]
    since: datetime


def _count(project_id: str, status: str, since: datetime | None) -> sa.ScalarSelect[int]:
    where = [Run.project_id == project_id, Run.status == status]
    if since is not None:
        where.append(Run.created_at >= since)
    return sa.select(sa.func.count()).select_from(Run).where(*where).scalar_subquery()


def status_counts(session: Session, project_id: str, *, since: datetime) -> StatusCounts:
    """One statement of one count per status, each a range of ``ix_runs_status_created`` (project, status,
    created_at) read from the index alone: a million runs cost what the counted ones do, not a scan."""
    row = session.execute(sa.select(*[_count(project_id, s, None) for s in ACTIVE_VALUES],
                                    *[_count(project_id, s, since) for s in ALL_VALUES])).one()
    active = dict(zip(ACTIVE_VALUES, row[:len(ACTIVE_VALUES)], strict=True))
    recent = dict(zip(ALL_VALUES, row[len(ACTIVE_VALUES):], strict=True))
    return StatusCounts(active=active, recent={s: n for s, n in recent.items() if n}, since=since)


_CRON_LAGS = sa.text("""
    SELECT j.id, j.slug, j.name, j.cron, j.timezone, j.enabled, r.id AS run_id, r.scheduled_at AS tick,
           r.created_at, r.started_at
    FROM jobs j
    LEFT JOIN LATERAL (
        SELECT id, scheduled_at, created_at, started_at FROM runs
        WHERE job_id = j.id AND triggered_by = 'cron' AND idempotency_key IS NOT NULL
        ORDER BY idempotency_key DESC LIMIT 1) r ON true
    WHERE j.project_id = :project_id AND j.cron IS NOT NULL
    ORDER BY j.created_at DESC, j.id DESC
    LIMIT :limit
""")


def cron_lags(session: Session, project_id: str, *, limit: int) -> list[dict[str, Any]]:
    """The project's newest ``limit`` cron jobs, each with its latest cron run: its tick (``tick``), when the
    scheduler created it (``lag_secs`` = created − tick) and when it started (``start_lag_secs``)."""
    rows = session.execute(_CRON_LAGS, {"project_id": project_id, "limit": limit}).mappings().all()
    out = []
    for row in rows:
        item = dict(row)
        tick = row["tick"]
        item["lag_secs"] = None if tick is None else (row["created_at"] - tick).total_seconds()
        item["start_lag_secs"] = (None if tick is None or row["started_at"] is None
                                  else (row["started_at"] - tick).total_seconds())
        out.append(item)
    return out


def replays_of(session: Session, project_id: str, run_ids: list[str]) -> dict[str, Run]:
    """The newest replay of each of these runs that has one (``continuation_of``), by original id."""
    if not run_ids:
        return {}
    query = (sa.select(Run).where(Run.continuation_of.in_(run_ids), Run.project_id == project_id)
             .order_by(Run.created_at.desc(), Run.id.desc()))
    found: dict[str, Run] = {}
    for run in session.scalars(query):
        found.setdefault(run.continuation_of or "", run)
    return found


def executing_job_ids(session: Session, project_id: str, *, limit: int) -> list[str]:
    """Jobs of the project with a run executing now."""
    return list(session.scalars(
        sa.select(Run.job_id).where(Run.project_id == project_id, Run.status == "executing").distinct().limit(limit)))
