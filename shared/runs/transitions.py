"""The run state machine as one table, and the builder of every statement that changes ``runs.status``.

``ENTRIES`` says, for each status, which statuses a run may enter it from and which bookkeeping columns
entering it sets; every move writes a ``state_change`` event ``{from, to}`` (plus the caller's events).
From the table come:

- ``status_columns``: the columns a run in a status carries (the inserts that create runs use it too);
- ``move_statement``: one SQL statement per move shape — a conditional UPDATE (of two racing writers
  exactly one wins) that writes its events in the same statement and, for terminal moves, reads what
  the terminal hooks need (the live job's webhook URL, whether any job depends on it);
- ``set_clause`` and ``state_change_event``: the pieces the worker's start statement embeds
  (``worker.start``), so a start is built from the same table.

Every statement built here carries the marker ``MARKER`` in its SQL and a name starting ``sluice_move``
(prepared statements keep it), which is how a test tells a writer built here from any other
(``tests/integration/test_status_writers.py``). Executing the statements and running the terminal hooks
is ``shared.runs.moves``'s job.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Run, RunEvent
from shared.db.prepared import PreparedStatement
from shared.ids import uuid7s
from shared.runs.status import CREATED, TERMINAL, RunStatus

S = RunStatus
MARKER = "/* sluice:transition */"
CREATION_MARKER = "/* sluice:creation */"


class Sql(str):
    """A column value that is an SQL expression over the row (``runs.attempt + 1``), not a parameter."""


@dataclass(frozen=True)
class Entry:
    """How runs enter one status: from where, and the bookkeeping columns the move sets."""

    allowed_from: frozenset[RunStatus]
    sets: tuple[tuple[str, object], ...] = ()  # column -> ``NOW``, None, a text, or an ``Sql`` expression


NOW = Sql("CAST(:now AS timestamptz)")  # the move's ``now``
_TERMINAL_SETS = (("finished_at", NOW), ("due_at", None))
EXPIRED_ERROR = "expired: not started before expires_at"
ENTRIES: dict[RunStatus, Entry] = {
    S.WAITING: Entry(frozenset()),  # only ever at creation
    S.QUEUED: Entry(frozenset({S.WAITING, S.DELAYED}), (("queued_at", NOW), ("due_at", None))),
    S.DELAYED: Entry(frozenset({S.WAITING, S.QUEUED, S.EXECUTING})),  # due_at: see ``status_columns``
    S.EXECUTING: Entry(frozenset({S.QUEUED}), (
        ("attempt", Sql("runs.attempt + 1")), ("started_at", NOW), ("heartbeat_at", NOW),
        ("next_retry_at", None), ("due_at", None))),
    S.COMPLETED: Entry(frozenset({S.EXECUTING}), _TERMINAL_SETS),
    S.FAILED: Entry(frozenset({S.EXECUTING}), _TERMINAL_SETS),
    S.TIMED_OUT: Entry(frozenset({S.EXECUTING}), _TERMINAL_SETS),
    S.CRASHED: Entry(frozenset({S.EXECUTING}), _TERMINAL_SETS),
    S.SYSTEM_FAILED: Entry(frozenset({S.QUEUED, S.EXECUTING}), _TERMINAL_SETS),
    S.EXPIRED: Entry(frozenset({S.DELAYED, S.QUEUED}),
                     (*_TERMINAL_SETS, ("error", EXPIRED_ERROR), ("error_class", None))),
    S.CANCELED: Entry(frozenset({S.WAITING, S.DELAYED, S.QUEUED, S.EXECUTING}),
                      (*_TERMINAL_SETS, ("error", "canceled"), ("error_class", None))),
}
ALLOWED_FROM = {status: entry.allowed_from for status, entry in ENTRIES.items()}

# Conditions a move may add by name (the statement text stays one per shape).
GUARDS = {
    "retry_over": "(runs.next_retry_at IS NULL OR runs.next_retry_at <= CAST(:now AS timestamptz))",
    "job_enabled": "EXISTS (SELECT 1 FROM jobs WHERE jobs.id = runs.job_id AND jobs.enabled)",
    "unstarted_past_expiry": "(runs.attempt = 0 AND runs.expires_at <= CAST(:now AS timestamptz))",
    # For a statement that must be a whole transaction: no terminal hook may be due.
    "no_hooks": ("NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = runs.job_id AND COALESCE(jobs.webhook_url, '') <> '')"
                 " AND NOT EXISTS (SELECT 1 FROM job_dependencies d WHERE d.depends_on_job_id = runs.job_id)"),
}

# runs columns stored as JSONB: their values are sent as JSON text and cast.
_JSONB_COLUMNS = frozenset(c.name for c in Run.__table__.columns if isinstance(c.type, sa.JSON))
# ORM attribute names that differ from their column names (``Run.run_metadata`` maps ``metadata``).
_COLUMN_OF = {attr.key: attr.columns[0].name for attr in sa.inspect(Run).column_attrs}


class InvalidMove(ValueError):
    """A move the table does not allow (a programming error, never a user's)."""


def status_columns(to: RunStatus, values: dict[str, Any], now: datetime) -> dict[str, Any]:
    """``values`` plus every column a move to ``to`` sets: ``status`` and the table's bookkeeping.

    ``delayed``'s ``due_at`` is the later of the ``scheduled_at`` and ``next_retry_at`` being set (now if
    neither is): when a delayed run is due."""
    columns = dict(values)
    columns["status"] = to.value
    for name, value in ENTRIES[to].sets:
        if not isinstance(value, Sql):
            columns[name] = value
        elif value is NOW:
            columns[name] = now
    if to is S.DELAYED:
        due = [v for v in (columns.get("scheduled_at"), columns.get("next_retry_at")) if v is not None]
        columns["due_at"] = max(due) if due else now
    return columns


def check_created(status: str) -> None:
    """A run is created ``waiting``, ``delayed`` or ``queued`` (with ``status_columns``' bookkeeping).
    ``status``: a ``RunStatus`` or its value (a ``StrEnum`` member hashes and compares as its value)."""
    if status not in CREATED:
        raise InvalidMove(f"a run cannot be created {status}")


def check_move(from_: frozenset[RunStatus], to: RunStatus) -> None:
    if not from_ or not from_ <= ENTRIES[to].allowed_from:
        raise InvalidMove(f"{sorted(from_)} -> {to} is not a run transition")


def event(event_id: str, run_id: str, type_: str, data: dict[str, Any], now: datetime,
          message: str | None = None) -> dict[str, Any]:
    """A ``run_events`` row, for the inserts that create runs (their ``state_change`` from null)."""
    return {"id": event_id, "run_id": run_id, "type": type_, "message": message, "data": data, "created_at": now}


def insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(sa.insert(RunEvent), rows)


def event_ids(count: int) -> list[str]:
    """``count`` new event ids in write order (events are read in (created_at, id) order, and ids made in
    one process sort in the order they were made)."""
    return uuid7s(count)


def _bookkeeping_sql(value: object) -> str:
    if isinstance(value, Sql):
        return str(value)
    if value is None:
        return "NULL"
    return "'" + str(value).replace("'", "''") + "'"


def _param_sql(name: str) -> str:
    return f"CAST(:v_{name} AS jsonb)" if _COLUMN_OF.get(name, name) in _JSONB_COLUMNS else f":v_{name}"


def set_clause(to: RunStatus, columns: tuple[str, ...]) -> str:
    """``status`` and the table's bookkeeping for ``to``, plus ``:v_<name>`` for each of ``columns``."""
    assigned = {"status": f"'{to.value}'"}
    for name, value in ENTRIES[to].sets:
        assigned[name] = _bookkeeping_sql(value)
    for name in columns:
        assigned[name] = _param_sql(name)
    return ", ".join(f'"{_COLUMN_OF.get(name, name)}" = {sql}' for name, sql in assigned.items())


def set_clause_through(via: RunStatus, to: RunStatus, condition: str) -> str:
    """The bookkeeping of passing through ``via`` on the way to ``to`` (``delayed → queued → executing`` in
    one statement), for rows where ``condition`` holds: ``via``'s columns that ``to`` does not set itself."""
    check_move(frozenset({via}), to)
    own = {name for name, _ in ENTRIES[to].sets}
    return ", ".join(f'"{name}" = CASE WHEN {condition} THEN {_bookkeeping_sql(value)} ELSE runs."{name}" END'
                     for name, value in ENTRIES[via].sets if name not in own)


def state_change_event(event_id: str, run: str, from_sql: str, to: RunStatus, message: str = "NULL") -> str:
    """The SELECT that writes one ``state_change`` event: ``run`` and ``from_sql`` are SQL over the moved
    row (``moved.id``, ``moved.old_status`` or a literal)."""
    return (f"SELECT {event_id}, {run}, 'state_change', {message}, "
            f"jsonb_build_object('from', {from_sql}, 'to', '{to.value}'), CAST(:now AS timestamptz)")


@dataclass(frozen=True)
class Shape:
    """What fixes a move statement's text: everything but the parameter values."""

    to: RunStatus
    from_: tuple[RunStatus, ...]
    columns: tuple[str, ...] = ()  # extra columns set from ``:v_<name>``
    conditions: tuple[str, ...] = ()  # extra ``<column> = :w_<name>`` conditions
    guards: tuple[str, ...] = ()  # names in ``GUARDS``
    extra_events: int = 0  # events after the state_change, each from ``:e<i>_id/_type/_data``
    many: bool = False  # ``:ids`` (with an id per run for each event, ``:e<i>_ids``) instead of ``:run_id``


@lru_cache(maxsize=512)
def move_statement(shape: Shape) -> PreparedStatement:
    """The statement for ``shape``; its rows are ``(id, job_id, old_status[, webhook_url, has_dependents])``,
    one per moved run (a batch's in the order of its ids), the last two for terminal moves without the
    ``no_hooks`` guard."""
    check_move(frozenset(shape.from_), shape.to)
    froms = ", ".join(f"'{s.value}'" for s in sorted(shape.from_))
    single_from = f"'{shape.from_[0].value}'" if len(shape.from_) == 1 else None
    # "IS TRUE": a condition on status that matches no partial index's predicate (``ix_runs_executing_heartbeat``
    # is ``WHERE status = 'executing'``), so the planner looks the run up by its key, never by scanning such
    # an index for it (which grows with the dead entries a busy table leaves).
    where = [f"(runs.status IN ({froms})) IS TRUE" if single_from is None else f"(runs.status = {single_from}) IS TRUE"]
    where += [f'runs."{_COLUMN_OF.get(c, c)}" = :w_{c}' for c in shape.conditions]
    where += [GUARDS[g] for g in shape.guards]
    numbers = range(shape.extra_events + 1)  # the state_change, then the caller's events
    if shape.many:  # each run's event ids travel beside its id
        arrays = ", ".join(["CAST(:ids AS varchar[])", *(f"CAST(:e{i}_ids AS varchar[])" for i in numbers)])
        source = f"FROM unnest({arrays}) WITH ORDINALITY AS t(id, {', '.join(f'e{i}_id' for i in numbers)}, place) "
        where.insert(0, "runs.id = t.id")
        event_ids_sql = [f"moved.e{i}_id" for i in numbers]
    else:
        source = ""
        where.insert(0, "runs.id = :run_id")
        event_ids_sql = [f":e{i}_id" for i in numbers]
    if single_from is None:
        # The old status goes into the event: read it, and update only if it is still what was read
        # (PostgreSQL re-checks the condition after taking the row lock).
        source = (source + ", " if source else "FROM ") + "(SELECT id AS old_id, status AS old_status FROM runs) old "
        where += ["old.old_id = runs.id", "runs.status = old.old_status"]
        old = "old.old_status"
    else:
        old = single_from
    returning = f"runs.id, runs.job_id, {old}::text AS old_status"
    if shape.many:
        returning += "".join(f", t.e{i}_id" for i in numbers) + ", t.place"
    events = [state_change_event(event_ids_sql[0], "moved.id", "moved.old_status", shape.to, ":message")
              + " FROM moved"]
    events += [f"SELECT {event_ids_sql[i]}, moved.id, :e{i}_type, NULL, CAST(:e{i}_data AS jsonb), "
               "CAST(:now AS timestamptz) FROM moved" for i in numbers[1:]]
    hooks = ""
    if shape.to in TERMINAL and "no_hooks" not in shape.guards:  # with the guard, no hook can be due
        hooks = (", (SELECT jobs.webhook_url FROM jobs WHERE jobs.id = moved.job_id) AS webhook_url, "
                 "EXISTS (SELECT 1 FROM job_dependencies d WHERE d.depends_on_job_id = moved.job_id) AS has_dependents")
    sql = (f"{MARKER} WITH moved AS (UPDATE runs SET {set_clause(shape.to, shape.columns)} {source}"
           f"WHERE {' AND '.join(where)} RETURNING {returning}), "
           f"logged AS (INSERT INTO run_events (id, run_id, type, message, data, created_at) "
           f"{' UNION ALL '.join(events)}) "
           f"SELECT moved.id, moved.job_id, moved.old_status{hooks} FROM moved"
           + (" ORDER BY moved.place" if shape.many else ""))  # a batch's rows in the order of its ids
    return PreparedStatement.build(f"sluice_move_{hashlib.sha1(sql.encode()).hexdigest()[:16]}", sql)


def move_params(shape: Shape, targets: str | list[str], now: datetime, values: dict[str, Any],
                where: dict[str, Any], events: list[tuple[str, dict[str, Any]]],
                message: str | None) -> dict[str, Any]:
    """The parameters of ``move_statement(shape)`` for ``targets`` (one run id, or a list when ``many``: each
    of ``events`` is then written for every run, with the same type and data)."""
    params: dict[str, Any] = {"now": now, "message": message}
    for name in shape.columns:
        value = values[name]
        params[f"v_{name}"] = json.dumps(value) if _COLUMN_OF.get(name, name) in _JSONB_COLUMNS else value
    for name in shape.conditions:
        params[f"w_{name}"] = where[name]
    for index, (type_, data) in enumerate(events, start=1):
        params[f"e{index}_type"] = type_
        params[f"e{index}_data"] = json.dumps(data)
    if shape.many:
        params["ids"] = list(targets)
        # One list per event, made in write order: each run's state_change sorts before its own events.
        for index in range(1 + len(events)):
            params[f"e{index}_ids"] = event_ids(len(targets))
        return params
    params["run_id"] = targets
    for index, event_id in enumerate(event_ids(1 + len(events))):
        params[f"e{index}_id"] = event_id
    return params
