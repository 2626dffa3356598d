"""Listing runs and run events (CONTRACT §7, §4.8, §1.6): filters and keyset pagination.

Pages are ordered newest first by ``(created_at, id)`` and continue strictly after the last item of the
previous page, so no run is skipped or repeated and runs created after page one never appear. Filters
arrive as raw query strings and are checked here (422 with the parameter name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.clock import parse_ts
from shared.db.models import Run, RunEvent
from shared.errors import ValidationFailed
from shared.ids import canonical_uuid
from shared.jobs.lookup import find_job
from shared.runs.status import FAILURE_STATUSES, RunStatus

TRIGGERS = ("manual", "cron", "replay")
_ALL_STATUSES = [s.value for s in RunStatus]
DLQ_STATUSES = sorted(s.value for s in FAILURE_STATUSES)


@dataclass(frozen=True)
class RunFilters:
    """AND-combined filters over one project's runs. ``job_id`` is resolved (``""`` = matches nothing)."""

    project_id: str
    job_id: str | None = None
    statuses: tuple[str, ...] | None = None
    triggered_by: str | None = None
    batch_id: str | None = None
    tag_key: str | None = None
    tag_value: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def _statuses(raw: str | None, allowed: list[str], *, dlq: bool) -> tuple[str, ...] | None:
    if raw is None:
        return tuple(allowed) if dlq else None
    values = [part.strip() for part in raw.split(",")]
    bad = [v for v in values if v not in allowed]
    if bad:
        where = "the DLQ statuses" if dlq else "known statuses"
        raise ValidationFailed({"status": [f"Unknown or not allowed status {bad[0]!r}; use {where}: "
                                           f"{', '.join(allowed)}."]})
    return tuple(dict.fromkeys(values))


def _timestamp(args: Mapping[str, str], name: str) -> datetime | None:
    raw = args.get(name)
    if raw is None:
        return None
    try:
        return parse_ts(raw)
    except ValueError as exc:
        raise ValidationFailed({name: ["Must be an RFC 3339 timestamp with an offset (Z or ±hh:mm)."]}) from exc


def parse_filters(session: Session, project_id: str, args: Mapping[str, str], *, job_id: str | None = None,
                  dlq: bool = False) -> RunFilters:
    """Check and resolve the §7 filters. ``job_id`` (already resolved) is given by the per-job route;
    otherwise the ``job_id`` query value is resolved as an id or slug in the project."""
    errors: dict[str, list[str]] = {name: ["Must not contain the NUL character (U+0000)."]
                                    for name, value in args.items() if "\x00" in value}
    triggered_by = args.get("triggered_by")
    if triggered_by is not None and triggered_by not in TRIGGERS:
        errors["triggered_by"] = [f"Must be one of: {', '.join(TRIGGERS)}."]
    if args.get("tag_value") is not None and args.get("tag_key") is None:
        errors["tag_value"] = ["Requires tag_key."]
    if errors:
        raise ValidationFailed(errors)
    statuses = _statuses(args.get("status"), DLQ_STATUSES if dlq else _ALL_STATUSES, dlq=dlq)
    created_after, created_before = _timestamp(args, "created_after"), _timestamp(args, "created_before")
    if job_id is None and args.get("job_id") is not None:
        job = find_job(session, project_id, args["job_id"])
        job_id = job.id if job is not None else ""
    return RunFilters(project_id=project_id, job_id=job_id, statuses=statuses, triggered_by=triggered_by,
                      batch_id=args.get("batch_id"), tag_key=args.get("tag_key"), tag_value=args.get("tag_value"),
                      created_after=created_after, created_before=created_before)


def _conditions(f: RunFilters) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = [Run.project_id == f.project_id]
    if f.job_id is not None:
        where.append(Run.job_id == f.job_id)
    if f.statuses is not None:
        where.append(Run.status.in_(f.statuses))
    if f.triggered_by is not None:
        where.append(Run.triggered_by == f.triggered_by)
    if f.batch_id is not None:
        where.append(Run.batch_id == f.batch_id)
    if f.tag_key is not None:
        tag = Run.tags[f.tag_key].as_string()
        where.append(tag.is_not(None) if f.tag_value is None else tag == f.tag_value)
    if f.created_after is not None:
        where.append(Run.created_at >= f.created_after)
    if f.created_before is not None:
        where.append(Run.created_at < f.created_before)
    return where


def _after(created_col: InstrumentedAttribute[datetime], id_col: InstrumentedAttribute[str],
           position: tuple[datetime, str]) -> sa.ColumnElement[bool]:
    created_at, row_id = position
    return sa.or_(created_col < created_at, sa.and_(created_col == created_at, id_col < row_id))


# What a run weighs in a page: the bytes of its payload and error as stored and of its result's JSON text.
_RUN_BYTES = (sa.func.octet_length(Run.payload)
              + sa.func.coalesce(sa.func.octet_length(sa.cast(Run.result, sa.Text)), 0)
              + sa.func.coalesce(sa.func.octet_length(Run.error), 0))


def list_runs(session: Session, filters: RunFilters, *, limit: int, max_bytes: int,
              after: tuple[datetime, str] | None = None) -> tuple[list[Run], tuple[datetime, str] | None]:
    """One page of runs, newest first, and the position to continue from (``None`` on the last page).

    The page also ends before the first run that would take the runs already in it past ``max_bytes``
    (``_RUN_BYTES``; a page always holds at least one run; 200 runs of megabyte payloads and results would
    otherwise make a response of hundreds of megabytes): the database weighs the page's candidates, in the
    same statement, and sends only the runs of the page.
    """
    order = (Run.created_at.desc(), Run.id.desc())
    candidates = sa.select(Run.id, Run.created_at, _RUN_BYTES.label("size")).where(*_conditions(filters))
    if after is not None:
        candidates = candidates.where(_after(Run.created_at, Run.id, after))
    first = candidates.order_by(*order).limit(limit + 1).subquery()
    before = sa.func.sum(first.c.size).over(order_by=(first.c.created_at.desc(), first.c.id.desc()), rows=(None, -1))
    weighed = sa.select(first.c.id, sa.func.coalesce(before, 0).label("before"),
                        sa.func.count().over().label("candidates")).subquery()
    rows = session.execute(sa.select(Run, weighed.c.candidates).join(weighed, weighed.c.id == Run.id)
                           .where(weighed.c.before < max_bytes).order_by(*order)).all()
    runs = [row[0] for row in rows]
    if runs and len(runs) < rows[0][1]:  # the budget ended the page: more runs follow
        return runs, (runs[-1].created_at, runs[-1].id)
    if len(runs) <= limit:
        return runs, None
    runs = runs[:limit]
    return runs, (runs[-1].created_at, runs[-1].id)


def list_events(session: Session, run_id: str, *, limit: int,
                after: tuple[datetime, str] | None = None) -> tuple[list[RunEvent], tuple[datetime, str] | None]:
    """One page of a run's events, newest first (same keyset rules as runs)."""
    query = sa.select(RunEvent).where(RunEvent.run_id == run_id)
    if after is not None:
        query = query.where(_after(RunEvent.created_at, RunEvent.id, after))
    events = list(session.scalars(query.order_by(RunEvent.created_at.desc(), RunEvent.id.desc())
                                  .limit(limit + 1)))
    if len(events) <= limit:
        return events, None
    events = events[:limit]
    return events, (events[-1].created_at, events[-1].id)


def get_project_run(session: Session, project_id: str, run_id: str) -> Run | None:
    """The run with this id in this project (another project's run, or a malformed id, is not found)."""
    run_id = canonical_uuid(run_id) or ""
    if not run_id:
        return None
    return session.scalars(sa.select(Run).where(Run.id == run_id, Run.project_id == project_id)).first()
