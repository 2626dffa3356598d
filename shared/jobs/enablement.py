"""Enabling and disabling jobs (CONTRACT §3.4, §5.12).

Disabling needs nothing beyond the flag: the scheduler stops firing and workers hold ready runs they pick
(``runs.held_at``). Enabling releases every held run: each of the job's ``queued`` runs gets its
``held_at`` cleared and is enqueued again after the commit (a duplicate message for a run that was still
in the queue is harmless: dispatch claims ``queued → executing`` conditionally).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.apikeys import Principal
from shared.db.models import Run
from shared.ids import canonical_uuid
from shared.jobs.store import JOBS
from shared.runs.effects import Effects
from shared.runs.status import RunStatus


def release_held_runs(session: Session, job_ids: Sequence[str], effects: Effects) -> list[str]:
    """Clear ``held_at`` on the jobs' queued runs and add them to ``effects.enqueue``; return their ids."""
    if not job_ids:
        return []
    rows = session.execute(
        sa.update(Run)
        .where(Run.job_id.in_(list(job_ids)), Run.status == RunStatus.QUEUED.value)
        .values(held_at=None)
        .returning(Run.id)
        .execution_options(synchronize_session=False)
    )
    released = [row[0] for row in rows]
    effects.enqueue.extend(released)
    return released


def set_jobs_enabled(session: Session, principal: Principal, refs: Sequence[str], enabled: bool, *,
                     now: datetime) -> tuple[int, Effects]:
    """Batch enable/disable: return (distinct jobs matched, after-commit effects).

    ``refs`` are ids or slugs of the caller's project; unknown ones are ignored, duplicates count once.
    Only jobs whose state changes get ``updated_at``/``updated_by``/``schedule_changed_at``; no version
    is written (§3.4).
    """
    effects = Effects()
    wanted = list(dict.fromkeys(r for r in refs if r))
    ids = sorted({cid for cid in (canonical_uuid(r) for r in wanted if len(r) <= 40) if cid is not None})
    if not wanted:
        return 0, effects
    condition: sa.ColumnElement[bool] = JOBS.c.slug.in_(wanted)
    if ids:
        condition = sa.or_(JOBS.c.id.in_(ids), condition)
    rows = session.execute(
        sa.select(JOBS.c.id, JOBS.c.slug, JOBS.c.enabled)
        .where(JOBS.c.project_id == principal.project_id, condition)
        .order_by(JOBS.c.id)  # one lock order for every caller: no deadlocks between batches
        .with_for_update()
    ).all()
    by_id = {row.id: row for row in rows}
    by_slug = {row.slug: row for row in rows}
    matched: set[str] = set()
    for ref in wanted:
        cid = canonical_uuid(ref) if len(ref) <= 40 else None
        hit = by_id.get(cid) if cid is not None else None
        hit = hit or by_slug.get(ref)
        if hit is not None:
            matched.add(hit.id)
    to_change = sorted(job_id for job_id in matched if by_id[job_id].enabled != enabled)
    if to_change:
        session.execute(
            sa.update(JOBS).where(JOBS.c.id.in_(to_change))
            .values(enabled=enabled, updated_at=now, updated_by=principal.actor, schedule_changed_at=now))
        if enabled:
            release_held_runs(session, to_change, effects)
    return len(matched), effects
