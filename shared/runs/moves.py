"""One-statement run transitions for the attempt hot path (PostgreSQL): UPDATE + events in one round trip.

``shared.runs.transitions.transition`` is the general state machine: an ORM UPDATE … RETURNING of the whole row,
then an INSERT of its events, then the terminal hooks' own lookups. The worker moves every run twice
(``queued → executing``, ``executing → <outcome>``) and already knows the from-status (it holds the row lock,
or the UPDATE's WHERE pins status and attempt), so here the same transition is one prebuilt textual
statement::

    WITH moved AS (UPDATE runs SET … WHERE id = :run_id AND status = :from_status [AND attempt = :w_attempt]
                   RETURNING id, status, job_id),
         logged AS (INSERT INTO run_events … SELECT … FROM moved [UNION ALL …])
    SELECT moved.status, moved.job_id[, jobs.webhook_url, <job has dependents>] FROM moved …

The events are inserted only if the UPDATE matched (they select FROM ``moved``), so the invariants of §4.7
hold exactly as in ``transition``: a conditional update, one ``state_change`` event per transition, the
derived bookkeeping columns (``shared.runs.transitions.status_columns``). For a terminal move the same statement
reads the live job's ``webhook_url`` and whether any job depends on it, so the terminal hooks (§5.14, §5.15)
run only when there is something to do — read in the same transaction as the outcome, never cached.

Statement text is built once per shape (columns set, number of events, extra WHERE columns) and cached;
textual SQL skips SQLAlchemy's per-statement cache-key and ORM work, which dominated the worker's CPU, and
where the engine allows it the statement is prepared once per connection (``shared.db.prepared``).
PostgreSQL only (data-modifying CTEs): callers keep ``transition`` for other dialects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import Run
from shared.db.prepared import HotStatement, execute_hot
from shared.ids import uuid7
from shared.metrics import observe_run_finished
from shared.runs.transitions import TERMINAL, Effects, RunStatus, status_columns

# runs columns stored as JSONB: their values are sent as JSON text and cast.
_JSONB_COLUMNS = frozenset(c.name for c in Run.__table__.columns if isinstance(c.type, sa.JSON))
# ORM attribute names that differ from their column names (``Run.run_metadata`` maps ``metadata``).
_COLUMN_OF = {attr.key: attr.columns[0].name for attr in sa.inspect(Run).column_attrs}


@dataclass(frozen=True)
class Moved:
    """The row after a one-statement move: its new status and job, and for terminal moves what the
    terminal hooks need to know (the live job's webhook URL, whether any job depends on it)."""

    status: str
    job_id: str
    webhook_url: str | None = None
    has_dependents: bool = False


def supports_moves(session: Session) -> bool:
    """Whether ``move_run`` can be used on this session's database (PostgreSQL)."""
    bind = session.get_bind()
    return bind.dialect.name == "postgresql"


def move_run(session: Session, run_id: str, *, from_status: RunStatus, to: RunStatus, now: datetime,
             effects: Effects, values: dict[str, Any] | None = None,
             events: list[tuple[str, dict[str, Any]]] | None = None,
             where_equal: dict[str, Any] | None = None, message: str | None = None) -> Moved | None:
    """Move ``run_id`` from ``from_status`` to ``to`` (with ``values`` and ``where_equal`` extra conditions),
    writing its ``state_change`` and ``events`` in the same statement; ``None`` if the row did not match.

    The caller must know ``from_status`` is a legal from-status of ``to`` (``ALLOWED_FROM``). On a terminal
    move this runs the terminal hooks exactly like ``transition`` (webhook unless suppressed, dependents),
    skipping each one's queries when the statement says there is nothing to do.
    """
    terminal = to in TERMINAL
    shape, params = _move_params(run_id, from_status, to, now, values, events, where_equal, message)
    row = execute_hot(session.connection(), _statement(*shape, terminal, False), params).first()
    if row is None:
        return None
    if not terminal:
        return Moved(row.status, row.job_id)
    moved = Moved(row.status, row.job_id, row.webhook_url, bool(row.has_dependents))
    _after_terminal(session, run_id, moved, now=now, effects=effects)
    return moved


StatementRunner = Callable[[HotStatement, dict[str, Any]], "tuple[Any, ...] | None"]


def move_run_unhooked(execute: StatementRunner, run_id: str, *, from_status: RunStatus, to: RunStatus,
                      now: datetime, values: dict[str, Any] | None = None,
                      events: list[tuple[str, dict[str, Any]]] | None = None,
                      where_equal: dict[str, Any] | None = None) -> Moved | None:
    """``move_run`` as one self-contained statement, for a caller that runs it as its own transaction
    (``execute``: e.g. an autocommit connection, ``worker.direct``).

    A terminal move here also requires that it has no terminal hooks to run — the live job has no
    ``webhook_url`` and no job depends on it — since those need further statements in the same
    transaction. ``None`` means nothing was written: the row did not match *or* hooks are due, and the
    caller goes on with ``move_run`` in a transaction (which tells the two apart).
    """
    terminal = to in TERMINAL
    shape, params = _move_params(run_id, from_status, to, now, values, events, where_equal, None)
    row = execute(_statement(*shape, terminal, True), params)
    if row is None:
        return None
    if terminal:
        observe_run_finished(str(row[0]))
    return Moved(str(row[0]), str(row[1]))


def _move_params(run_id: str, from_status: RunStatus, to: RunStatus, now: datetime,
                 values: dict[str, Any] | None, events: list[tuple[str, dict[str, Any]]] | None,
                 where_equal: dict[str, Any] | None,
                 message: str | None) -> tuple[tuple[tuple[str, ...], tuple[str, ...], int], dict[str, Any]]:
    """The statement shape (columns set, extra WHERE columns, number of events) and its parameters."""
    updates = status_columns(to, values or {}, now)
    columns = tuple(sorted(updates))
    conditions = tuple(sorted(where_equal or {}))
    all_events = [("state_change", {"from": from_status.value, "to": to.value}, message)]
    all_events += [(type_, data, None) for type_, data in (events or [])]
    params: dict[str, Any] = {"run_id": run_id, "from_status": from_status.value, "now": now}
    for name in columns:
        value = updates[name]
        params[f"v_{name}"] = json.dumps(value) if _COLUMN_OF.get(name, name) in _JSONB_COLUMNS else value
    for name in conditions:
        params[f"w_{name}"] = (where_equal or {})[name]
    # uuid7 is random within a millisecond: sorted ids keep the events in write order (created_at, id).
    event_ids = sorted(uuid7() for _ in all_events)
    for index, (type_, data, text) in enumerate(all_events):
        params[f"e{index}_id"] = event_ids[index]
        params[f"e{index}_type"] = type_
        params[f"e{index}_message"] = text
        params[f"e{index}_data"] = json.dumps(data)
    return (columns, conditions, len(all_events)), params


def _after_terminal(session: Session, run_id: str, moved: Moved, *, now: datetime, effects: Effects) -> None:
    """``shared.runs.hooks.on_terminal``, minus the lookups the move already answered.

    The full row is loaded only when a webhook is due (its body is the Run resource), and only then is
    it added to ``effects.terminal_runs``.
    """
    from shared.dependencies.gating import release_dependents
    from shared.webhooks.outbox import queue_terminal_webhook

    observe_run_finished(moved.status)
    if moved.webhook_url and not effects.suppress_webhooks:
        run = session.execute(sa.select(Run).where(Run.id == run_id)
                              .execution_options(populate_existing=True)).scalar_one()
        effects.terminal_runs.append(run)
        queue_terminal_webhook(session, run, now=now, effects=effects)
    if moved.has_dependents:
        release_dependents(session, moved.job_id, now=now, effects=effects)


@lru_cache(maxsize=256)
def _statement(columns: tuple[str, ...], conditions: tuple[str, ...], n_events: int,
               terminal: bool, unhooked: bool) -> HotStatement:
    def assign(name: str) -> str:
        column = _COLUMN_OF.get(name, name)
        value = f"CAST(:v_{name} AS jsonb)" if column in _JSONB_COLUMNS else f":v_{name}"
        return f'"{column}" = {value}'

    where = ["id = :run_id", "status = :from_status", *(f'"{_COLUMN_OF.get(c, c)}" = :w_{c}' for c in conditions)]
    logged = " UNION ALL ".join(
        f"SELECT :e{i}_id, moved.id, :e{i}_type, :e{i}_message, CAST(:e{i}_data AS jsonb), "
        f"CAST(:now AS timestamptz) FROM moved" for i in range(n_events))
    hooks = ""
    if terminal and unhooked:  # only where no hook is due (move_run_unhooked)
        where += ["NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = runs.job_id "
                  "AND COALESCE(jobs.webhook_url, '') <> '')",
                  "NOT EXISTS (SELECT 1 FROM job_dependencies d WHERE d.depends_on_job_id = runs.job_id)"]
    elif terminal:
        hooks = (", (SELECT jobs.webhook_url FROM jobs WHERE jobs.id = moved.job_id) AS webhook_url, "
                 "EXISTS (SELECT 1 FROM job_dependencies d WHERE d.depends_on_job_id = moved.job_id) "
                 "AS has_dependents")
    sql = (
        f"WITH moved AS (UPDATE runs SET {', '.join(assign(c) for c in columns)} "
        f"WHERE {' AND '.join(where)} RETURNING runs.id, runs.status, runs.job_id), "
        f"logged AS (INSERT INTO run_events (id, run_id, type, message, data, created_at) {logged}) "
        f"SELECT moved.status, moved.job_id{hooks} FROM moved"
    )
    return HotStatement.build(f"sluice_move_{hashlib.sha1(sql.encode()).hexdigest()[:16]}", sql)
