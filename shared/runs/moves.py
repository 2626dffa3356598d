"""Moving runs: the statements of ``shared.runs.transitions`` executed, and what a move sets in motion.

``move`` (one run), ``move_many`` (a batch) and ``move_alone`` (one run, as a whole transaction on an
autocommit connection) are the only ways Sluice changes a run's status after creating it. Each is one
statement; a move to ``queued`` adds the run to ``effects.enqueue``, and every terminal move runs the
terminal hooks, here and nowhere else:

- the job's webhook (when the live job has a ``webhook_url``, unless ``effects.suppress_webhooks``);
- re-evaluation of the waiting runs of jobs that depend on the run's job (``release_waiting``).

The statement itself says whether either is due, so a move without hooks costs one round trip.
``move_alone`` cannot run hooks (they need more statements in the same transaction): it refuses a
terminal move that has some, and the caller repeats it with ``move`` in a transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Run
from shared.db.prepared import PreparedStatement, execute_prepared
from shared.dependencies.gating import (
    Finished,
    Verdict,
    dependent_jobs,
    finished_keys,
    releasable_runs,
    release_expiry,
)
from shared.metrics import observe_run_finished
from shared.runs.effects import Effects
from shared.runs.status import TERMINAL, RunStatus
from shared.runs.transitions import ALLOWED_FROM, Shape, move_params, move_statement, status_columns
from shared.webhooks.outbox import queue_terminal_webhook

Events = list[tuple[str, dict[str, Any]]]
StatementRunner = Callable[[PreparedStatement, dict[str, Any]], "tuple[Any, ...] | None"]


@dataclass(frozen=True)
class Moved:
    """A run after a move: its id, job and the status it left."""

    id: str
    job_id: str
    old_status: str


def _shape(to: RunStatus, from_: Iterable[RunStatus] | None, values: dict[str, Any], where: dict[str, Any],
           guards: tuple[str, ...], events: Events, many: bool, now: datetime) -> tuple[Shape, dict[str, Any]]:
    extra = dict(values)
    if to is RunStatus.DELAYED:  # when it is due comes from the values being set (``status_columns``)
        extra["due_at"] = status_columns(to, values, now)["due_at"]
    origin = tuple(sorted(from_ if from_ is not None else ALLOWED_FROM[to]))
    shape = Shape(to, origin, tuple(sorted(extra)), tuple(sorted(where)), guards, len(events), many)
    return shape, extra


def move(session: Session, run_id: str, to: RunStatus, *, now: datetime, effects: Effects,
         from_: Iterable[RunStatus] | None = None, values: dict[str, Any] | None = None,
         where: dict[str, Any] | None = None, guards: tuple[str, ...] = (), events: Events | None = None,
         message: str | None = None) -> Moved | None:
    """Move ``run_id`` to ``to`` if its status is one of ``from_`` (default: every status the table allows)
    and ``where`` (column = value) and ``guards`` hold; ``None`` if it did not match. Sets ``values`` and the
    table's bookkeeping, writes ``state_change`` (with ``message``) and ``events``; the caller commits."""
    shape, extra = _shape(to, from_, values or {}, where or {}, guards, events or [], False, now)
    params = move_params(shape, run_id, now, extra, where or {}, events or [], message)
    rows = execute_prepared(session.connection(), move_statement(shape), params).all()
    moved = _after(session, to, rows, now=now, effects=effects, due=extra.get("due_at"))
    return moved[0] if moved else None


def move_many(session: Session, run_ids: list[str], to: RunStatus, *, now: datetime, effects: Effects,
              from_: Iterable[RunStatus] | None = None, values: dict[str, Any] | None = None,
              guards: tuple[str, ...] = (), events: Events | None = None, message: str | None = None) -> list[Moved]:
    """``move`` for a batch of runs in one statement: the same ``values`` for each, and each writes its
    ``state_change`` and ``events`` (the same type and data for every run)."""
    if not run_ids:
        return []
    shape, extra = _shape(to, from_, values or {}, {}, guards, events or [], True, now)
    params = move_params(shape, run_ids, now, extra, {}, events or [], message)
    rows = execute_prepared(session.connection(), move_statement(shape), params).all()
    return _after(session, to, rows, now=now, effects=effects, due=extra.get("due_at"))


def move_alone(execute: StatementRunner, run_id: str, to: RunStatus, *, now: datetime, effects: Effects,
               from_: RunStatus, values: dict[str, Any] | None = None, where: dict[str, Any] | None = None,
               guards: tuple[str, ...] = (), events: Events | None = None) -> Moved | None:
    """``move`` as one self-contained statement, run by ``execute`` as its own transaction (the worker's
    autocommit connection). ``None``: the run did not match, or the move is terminal and a hook is due;
    the caller then repeats it with ``move`` in a transaction, which tells the two apart. Of the effects
    only ``due`` can be set (a move to ``delayed``); the caller applies them."""
    guards = (*guards, "no_hooks") if to in TERMINAL else guards
    shape, extra = _shape(to, (from_,), values or {}, where or {}, guards, events or [], False, now)
    row = execute(move_statement(shape), move_params(shape, run_id, now, extra, where or {}, events or [], None))
    if row is None:
        return None
    if to in TERMINAL:
        observe_run_finished(to.value)
    effects.note_due(extra.get("due_at"))
    return Moved(str(row[0]), str(row[1]), str(row[2]))


def _after(session: Session, to: RunStatus, rows: Sequence[Any], *, now: datetime, effects: Effects,
           due: datetime | None) -> list[Moved]:
    moved = [Moved(str(row[0]), str(row[1]), str(row[2])) for row in rows]
    if moved:
        effects.note_due(due)  # a move to ``delayed``: the scheduler promotes it then
    if to is RunStatus.QUEUED:
        effects.enqueue.extend(m.id for m in moved)
    if to in TERMINAL:
        for row, one in zip(rows, moved, strict=True):
            observe_run_finished(to.value)
            if row[3] and not effects.suppress_webhooks:
                queue_terminal_webhook(session, _load(session, one.id), url=row[3], now=now, effects=effects)
        upstream = [one.id for row, one in zip(rows, moved, strict=True) if row[4]]
        for job_id, finished in (finished_keys(session, upstream) if upstream else {}).items():
            release_dependents(session, job_id, now=now, effects=effects, finished=finished)
    return moved


def _load(session: Session, run_id: str) -> Run:
    return session.execute(sa.select(Run).where(Run.id == run_id)
                           .execution_options(populate_existing=True)).scalar_one()


def release_dependents(session: Session, upstream_job_id: str, *, now: datetime, effects: Effects,
                       finished: Finished | None = None) -> int:
    """Re-evaluate the waiting runs of every job that depends on ``upstream_job_id`` (with ``finished``, the
    ones that correlate with those upstream runs); how many were released. Run by every terminal move, in
    its transaction."""
    return sum(release_waiting(session, job_id, now=now, effects=effects, finished=finished)
               for job_id in dependent_jobs(session, upstream_job_id))


def release_waiting(session: Session, job_id: str, *, now: datetime, effects: Effects,
                    finished: Finished | None = None) -> int:
    """Release ``job_id``'s waiting runs whose edges all hold, oldest first (``queued``, or ``delayed`` if
    ``scheduled_at`` is ahead; event ``released``); how many. With ``finished``, only the runs that those
    upstream runs can release are looked at (``shared.dependencies.gating.correlating_with``)."""
    return sum(release_runs(session, batch, now=now, effects=effects)
               for batch in releasable_runs(session, job_id, finished))


def release_runs(session: Session, runs: Sequence[tuple[Run, Verdict]], *, now: datetime, effects: Effects) -> int:
    """Release each waiting run whose edges were found to hold (under its job's dependency lock): ``queued``,
    or ``delayed`` if its ``scheduled_at`` is ahead, with the event ``released``; how many. Runs released
    alike (the same expiry, schedule and upstream runs: all the keyless runs of a job, typically) move in
    one statement."""
    alike: dict[tuple[datetime | None, datetime | None, tuple[str, ...]], list[str]] = {}
    for run, verdict in runs:
        ahead = run.scheduled_at if run.scheduled_at is not None and run.scheduled_at > now else None
        alike.setdefault((release_expiry(run, now), ahead, tuple(verdict.dependency_runs)), []).append(run.id)
    released = 0
    for (expires_at, ahead, dependency_runs), run_ids in alike.items():
        values: dict[str, Any] = {"expires_at": expires_at}
        if ahead is not None:
            values["scheduled_at"] = ahead  # a delayed run is due at its scheduled_at
        released += len(move_many(session, run_ids, RunStatus.QUEUED if ahead is None else RunStatus.DELAYED,
                                  now=now, effects=effects, from_=(RunStatus.WAITING,), values=values,
                                  events=[("released", {"dependency_runs": list(dependency_runs)})]))
    return released
