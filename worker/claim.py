"""Claiming the best ready run (CONTRACT §5.1 step 1, §5.11, §5.12).

Messages on ``sluice.runs`` are wake-up tokens: each names a run, but the worker handling it claims the
*best* ready run — highest ``priority``, then the earliest ``queued_at``, then id — among queued runs of
enabled jobs that are not held. That gives strict priority across workers and makes every message
interchangeable: as long as there are at least as many messages as queued runs (the sweeper re-creates
lost ones by count), every queued run gets claimed.

On PostgreSQL the common case never gets here: ``worker.fast_start`` claims (the message's own run when no
ready run has a higher priority, else the best) and starts in one statement; this module is the checked
path it falls back to when a check could refuse the picked run.

``FOR UPDATE OF runs SKIP LOCKED`` lets concurrent workers claim different rows without waiting; the row
stays locked until the claim transaction commits (the start transition, or a re-delay), so a duplicate
message can never start a second attempt. On SQLite both clauses are ignored and writers are serialised
(``BEGIN IMMEDIATE``), which gives the same guarantee.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from shared.db.models import Job, Run
from shared.db.prepared import HotStatement, prepare_once
from shared.runs.transitions import RunStatus, insert_events
from shared.runs.transitions import event as event_row

_QUEUED = RunStatus.QUEUED.value

# Built once: the statement has no parameters, and building it per message costs more than running it.
_CLAIM = (
    sa.select(Run, Job).join(Job, Job.id == Run.job_id)
    .where(Run.status == _QUEUED, Run.held_at.is_(None), Job.enabled.is_(True))
    .order_by(Run.priority.desc(), Run.queued_at, Run.id)
    .limit(1)
    .with_for_update(of=Run, skip_locked=True)
)


# The same statement as a prepared statement (shared.db.prepared): it has no parameters, so PostgreSQL plans
# it once per connection instead of once per claim (planning the join over 14 indexes cost more than
# running it). The ORM loads the EXECUTE's columns positionally.
_CLAIM_HOT = HotStatement.build(
    "sluice_claim", str(_CLAIM.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})))
_CLAIM_PREPARED = sa.select(Run, Job).from_statement(
    sa.text(f"EXECUTE {_CLAIM_HOT.name}").columns(*Run.__table__.columns, *Job.__table__.columns))


def claim_ready_run(session: Session) -> tuple[Run, Job] | None:
    """Lock and return the best ready run with its live job, or ``None`` when nothing is claimable.

    Served by the partial index ``ix_runs_ready`` (priority DESC, queued_at, id WHERE status = 'queued').
    """
    prepared = prepare_once(session.connection(), _CLAIM_HOT)
    row = session.execute(_CLAIM_PREPARED if prepared else _CLAIM).first()
    return None if row is None else (row[0], row[1])


def hold_if_disabled(session: Session, run_id: str, now: datetime) -> bool:
    """Mark ``run_id`` held (``held_at`` = now, event ``held`` {}) if it is queued, unheld, and its job is
    disabled (§5.12). Returns whether it did; a run is held once until the job is re-enabled.

    Holding is not a status change (the run stays ``queued``), so it does not go through the state machine.
    """
    disabled_job = sa.select(Job.id).where(Job.id == Run.job_id, Job.enabled.is_(False)).exists()
    held = session.execute(
        sa.update(Run)
        .where(Run.id == run_id, Run.status == _QUEUED, Run.held_at.is_(None), disabled_job)
        .values(held_at=now)
        .execution_options(synchronize_session=False)
    )
    if not held.rowcount:  # type: ignore[attr-defined]
        return False
    insert_events(session, [event_row(run_id, "held", {}, now)])
    return True
