"""The run state machine (CONTRACT §4.7): the only code that writes ``runs.status``.

Every transition is one conditional UPDATE on the current status (of two racing writers exactly one
wins) and writes its ``state_change`` event in the same transaction. Work that must happen after the
commit (enqueueing a queued run, delivering a webhook) is collected in ``Effects`` for the caller,
who owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Run, RunEvent
from shared.errors import InvalidTransition
from shared.ids import uuid7
from shared.metrics import observe_run_finished


class RunStatus(StrEnum):
    DELAYED = "delayed"
    QUEUED = "queued"
    WAITING = "waiting"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CRASHED = "crashed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    SYSTEM_FAILED = "system_failed"


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CRASHED,
                      RunStatus.CANCELED, RunStatus.EXPIRED, RunStatus.SYSTEM_FAILED})
ACTIVE = frozenset(set(RunStatus) - TERMINAL)
FAILURE_STATUSES = frozenset({RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CRASHED,
                              RunStatus.SYSTEM_FAILED})

S = RunStatus
# to-status -> the statuses it may be entered from (§4.7's table, creation excluded).
ALLOWED_FROM: dict[RunStatus, frozenset[RunStatus]] = {
    S.QUEUED: frozenset({S.WAITING, S.DELAYED}),
    S.DELAYED: frozenset({S.WAITING, S.QUEUED, S.EXECUTING}),
    S.EXECUTING: frozenset({S.QUEUED}),
    S.COMPLETED: frozenset({S.EXECUTING}),
    S.FAILED: frozenset({S.EXECUTING}),
    S.TIMED_OUT: frozenset({S.EXECUTING}),
    S.CRASHED: frozenset({S.EXECUTING}),
    S.SYSTEM_FAILED: frozenset({S.QUEUED, S.EXECUTING}),
    S.EXPIRED: frozenset({S.DELAYED, S.QUEUED}),
    S.CANCELED: frozenset({S.WAITING, S.DELAYED, S.QUEUED, S.EXECUTING}),
}


def is_terminal(status: str) -> bool:
    return status in TERMINAL


@dataclass
class Effects:
    """After-commit work gathered by transitions: run ids to enqueue, webhook deliveries to send."""

    enqueue: list[str] = field(default_factory=list)
    webhooks: list[str] = field(default_factory=list)
    wake_slots: list[tuple[str, str | None]] = field(default_factory=list)  # (job, key): shared.limits.waiters
    terminal_runs: list[Run] = field(default_factory=list)
    # Forced job delete cancels runs without webhooks (§3.6).
    suppress_webhooks: bool = False

    def merge(self, other: Effects) -> None:
        self.enqueue.extend(other.enqueue)
        self.webhooks.extend(other.webhooks)
        self.terminal_runs.extend(other.terminal_runs)


def event(run_id: str, type_: str, data: dict[str, Any], now: datetime, message: str | None = None) -> dict[str, Any]:
    """A run_events row as a dict, for bulk inserts."""
    return {"id": uuid7(), "run_id": run_id, "type": type_, "message": message, "data": data, "created_at": now}


def insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(sa.insert(RunEvent), rows)


def status_columns(to: RunStatus, values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``values`` plus the columns every move to ``to`` sets: ``status`` and the derived bookkeeping
    (``finished_at``, ``queued_at``, ``due_at``), so no writer can forget it."""
    updates = dict(values)
    updates["status"] = to.value
    if to in TERMINAL:
        updates["finished_at"] = now
        updates["due_at"] = None
    elif to is RunStatus.QUEUED:
        updates["queued_at"] = now
        updates["due_at"] = None
    elif to is RunStatus.DELAYED:
        due_parts = [v for v in (updates.get("scheduled_at"), updates.get("next_retry_at")) if v is not None]
        updates["due_at"] = max(due_parts) if due_parts else now
    return updates


def transition(
    session: Session,
    run_id: str,
    to: RunStatus,
    *,
    now: datetime,
    effects: Effects,
    expected: frozenset[RunStatus] | set[RunStatus] | None = None,
    values: dict[str, Any] | None = None,
    events: list[tuple[str, dict[str, Any]]] | None = None,
    message: str | None = None,
    locked_status: RunStatus | None = None,
    where: tuple[sa.ColumnElement[bool], ...] = (),
) -> Run | None:
    """Move a run to ``to`` if its current status allows it; return the updated run or ``None``.

    ``expected`` narrows the allowed from-statuses (e.g. only ``executing``); ``values`` are extra
    columns to set in the same UPDATE; ``events`` are extra (type, data) events written after the
    ``state_change`` event. Status bookkeeping (``finished_at``, ``queued_at``, ``due_at``) is derived
    here so no caller can forget it. ``locked_status``: the caller knows the current status (it holds the
    row lock, or ``where`` pins the row state it expects), so the locking read is skipped (the worker's hot
    path); the UPDATE stays conditional on it and PostgreSQL re-checks its WHERE after taking the lock.
    ``where``: extra conditions of the UPDATE (e.g. ``Run.attempt == n``), ``None`` if they do not hold.
    """
    allowed = ALLOWED_FROM[to]
    if expected is not None:
        if not set(expected) <= allowed:
            raise InvalidTransition(f"{sorted(expected)} -> {to} is not a valid run transition")
        allowed = frozenset(expected)
    updates = status_columns(to, values or {}, now)
    # Lock the row and read its status: the from-status goes into the event, and a racing writer
    # that changed it first makes this return None (PostgreSQL re-checks the WHERE after the lock).
    if locked_status is not None:
        old_status = locked_status.value if locked_status in allowed else None
    else:
        old_status = session.execute(
            sa.select(Run.status)
            .where(Run.id == run_id, Run.status.in_([s.value for s in allowed]))
            .with_for_update()
        ).scalar()
    if old_status is None:
        return None
    result = session.execute(
        sa.update(Run)
        .where(Run.id == run_id, Run.status == old_status, *where)
        .values(**updates)
        .returning(Run)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    run = result.scalar_one_or_none()
    if run is None:
        return None
    rows = [event(run_id, "state_change", {"from": old_status, "to": to.value}, now, message)]
    rows += [event(run_id, type_, data, now) for type_, data in (events or [])]
    # uuid7 is random within a millisecond: sorted ids keep the events in write order (created_at, id).
    for row, event_id in zip(rows, sorted(row["id"] for row in rows), strict=True):
        row["id"] = event_id
    insert_events(session, rows)
    if to is RunStatus.QUEUED:
        effects.enqueue.append(run_id)
    if to in TERMINAL:
        observe_run_finished(to.value)
        effects.terminal_runs.append(run)
        from shared.runs.hooks import on_terminal  # the terminal hooks build on this module

        on_terminal(session, run, now=now, effects=effects)
    return run
