"""PostgreSQL is the source of truth (CONTRACT §5.1, §5.10, §5.11): the periodic sweeps that keep Redis and
the clock-driven statuses in line with it. Each function does one batch in the caller's transaction.

- ``promote_due_delayed``: ``delayed`` runs whose ``due_at`` has come → ``queued`` (and a message).
- ``expire_unstarted``: unstarted (``attempt`` = 0) ``delayed``/``queued`` runs past ``expires_at`` →
  ``expired``.
- ``recover_lost_messages``: re-create messages Redis lost (restart, crash between commit and enqueue).

Lost messages are detected by **count**, not by id. A worker claims the best ready run, not the one its
message names, so messages are interchangeable wake-up tokens: every queued run is served as long as
there are at least as many usable tokens as ready runs. Messages of executing runs stay un-acked in
the queue's ``.msgs`` hash until the attempt ends, so the usable tokens are ``pending - executing``::

    deficit = ready runs queued more than 2 s ago - max(0, pending messages - executing runs)

The 2 s grace leaves room for the normal commit-then-enqueue of a fresh run. A positive deficit is
covered by enqueueing that many messages naming the oldest ready runs. Over-counting only costs a
worker a wasted wake-up; under-counting is corrected at the next sweep.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Job, Run
from shared.dependencies.gating import WaitingCursor, recheck_page
from shared.messages.enqueue import enqueue_runs
from shared.messages.queue_state import pending_messages
from shared.runs.effects import Effects
from shared.runs.moves import move_many, release_runs
from shared.runs.status import RunStatus

log = logging.getLogger("sluice.sweeper")

PROMOTE_BATCH = 1000
EXPIRE_BATCH = 200
RECOVER_MAX = 1000
LOST_AFTER = timedelta(seconds=2)
_DELAYED, _QUEUED, _EXECUTING = RunStatus.DELAYED.value, RunStatus.QUEUED.value, RunStatus.EXECUTING.value


def promote_due_delayed(session: Session, now: datetime, effects: Effects, *, batch: int = PROMOTE_BATCH) -> int:
    """Move up to ``batch`` due ``delayed`` runs to ``queued`` in one statement; return how many.

    Rows are taken ``FOR UPDATE SKIP LOCKED`` so concurrent sweepers and workers never wait on each other.
    """
    ids = list(session.scalars(
        sa.select(Run.id).where(Run.status == _DELAYED, Run.due_at <= now)
        .order_by(Run.due_at).limit(batch).with_for_update(skip_locked=True)))
    return len(move_many(session, ids, RunStatus.QUEUED, now=now, effects=effects, from_=(RunStatus.DELAYED,)))


def seconds_until_next_due(session: Session, now: datetime) -> float | None:
    """Seconds until the earliest ``delayed`` run falls due (≤ 0 if one already is); ``None`` if none waits.

    One index lookup (``ix_runs_delayed_due``): lets the promotion loop wake exactly when the next run
    is due instead of polling, so a run refused by a rate limit starts when the window has room.
    """
    due = session.execute(sa.select(sa.func.min(Run.due_at)).where(Run.status == _DELAYED)).scalar()
    return None if due is None else (due - now).total_seconds()


def seconds_until_next_expiry(session: Session, now: datetime) -> float | None:
    """Seconds until the earliest unstarted ``delayed``/``queued`` run expires (≤ 0 if one has); ``None`` if
    none can. The same rows ``expire_unstarted`` looks at (``ix_runs_expiring``)."""
    expires = session.execute(
        sa.select(sa.func.min(Run.expires_at))
        .where(Run.attempt == 0, Run.expires_at.is_not(None), Run.status.in_([_DELAYED, _QUEUED]))).scalar()
    return None if expires is None else (expires - now).total_seconds()


def expire_unstarted(session: Session, now: datetime, effects: Effects, *, batch: int = EXPIRE_BATCH) -> int:
    """Expire up to ``batch`` unstarted runs whose ``expires_at`` has passed; return how many.

    Expiry is terminal: the move runs the terminal hooks (webhook, dependents). Started runs (``attempt``
    ≥ 1) never expire, even while delayed for a retry.
    """
    ids = list(session.scalars(
        sa.select(Run.id).where(Run.attempt == 0, Run.expires_at <= now, Run.status.in_([_DELAYED, _QUEUED]))
        .order_by(Run.expires_at).limit(batch).with_for_update(skip_locked=True)))
    return len(move_many(session, ids, RunStatus.EXPIRED, now=now, effects=effects,
                         from_=(RunStatus.DELAYED, RunStatus.QUEUED), guards=("unstarted_past_expiry",)))


def message_deficit(session: Session, now: datetime, pending: int) -> tuple[int, list[str]]:
    """``(deficit, oldest ready run ids)`` given the broker's pending message count (see module doc)."""
    ready = (sa.select(Run.id).join(Job, Job.id == Run.job_id)
             .where(Run.status == _QUEUED, Run.held_at.is_(None), Run.queued_at < now - LOST_AFTER,
                    Job.enabled.is_(True)))
    waiting_count = session.scalar(sa.select(sa.func.count()).select_from(ready.subquery())) or 0
    if not waiting_count:
        return 0, []
    executing = session.scalar(sa.select(sa.func.count()).select_from(Run).where(Run.status == _EXECUTING)) or 0
    deficit = waiting_count - max(0, pending - executing)
    if deficit <= 0:
        return 0, []
    ids = list(session.scalars(ready.order_by(Run.queued_at, Run.id).limit(min(deficit, RECOVER_MAX))))
    return deficit, ids


def recover_lost_messages(session: Session, now: datetime, broker: Any) -> int:
    """Enqueue one message per missing token (at most ``RECOVER_MAX`` per sweep); return how many."""
    deficit, ids = message_deficit(session, now, pending_messages(broker))
    if not ids:
        return 0
    log.warning("re-enqueueing lost run messages", extra={"deficit": deficit, "enqueued": len(ids)})
    return enqueue_runs(broker, ids)


RECHECK_RUNS = 500  # waiting runs re-evaluated per pass


def recheck_waiting(session: Session, now: datetime, effects: Effects, *, after: WaitingCursor | None = None,
                    limit: int = RECHECK_RUNS) -> tuple[int, int, WaitingCursor | None]:
    """Safety net: re-evaluate the next ``limit`` waiting runs after ``after`` (in job, creation order),
    releasing those whose edges hold; ``(released, looked at, cursor for the next pass)``. The dependency
    locks make a trigger and a finishing upstream run safe; one race they do not cover is an edge *created*
    while its upstream run finishes (the finisher read the dependents before the edge committed, then a run
    of the dependent job was gated on it). Normally this releases nothing; a release here is such a
    wake-up, recovered late instead of never. Bounded per pass and resumable: a backlog of waiting runs is
    walked a page per pass, never re-read from the start each time."""
    releasable, looked_at, cursor = recheck_page(session, after, limit=limit)
    released = release_runs(session, releasable, now=now, effects=effects)
    return released, looked_at, cursor
