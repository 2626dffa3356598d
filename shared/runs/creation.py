"""Creating runs (CONTRACT §4.2 steps 9–10, §4.6, §5.10, §6.6, §7 replay): one path for manual, bulk,
cron and replay.

A run is born ``waiting`` (dependencies unmet), ``delayed`` (start ahead) or ``queued``, with a
``state_change`` event ``{from: null, to: <status>}``. Rows are built as plain dicts so that one request
can insert any number of runs and events with one statement each. Queued runs are appended to
``effects.enqueue``; the caller commits, then enqueues (``shared.runs.commit.commit_and_apply``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared import json_codec
from shared.db.models import Job, Run
from shared.db.prepared import PreparedStatement, run_prepared
from shared.dependencies.gating import Correlation, correlation_of, gate_new_runs
from shared.ids import uuid7, uuid7s
from shared.metrics import observe_runs_created, observe_runs_created_by
from shared.runs.effects import Effects
from shared.runs.retries import retry_summary
from shared.runs.status import RunStatus
from shared.runs.trace_context import new_traceparent
from shared.runs.transitions import CREATION_MARKER, check_created, event, status_columns
from shared.triggers.payloads import EMPTY_PAYLOAD, EMPTY_PAYLOAD_HASH

CRON_ACTOR = "system:cron"


@dataclass
class RunInputs:
    """Everything about a new run that does not come from the job. ``payload`` is canonical JSON text;
    ``ttl_secs`` is the TTL already chosen (trigger value if > 0, else the job's), ``None`` = never."""

    created_by: str
    triggered_by: str = "manual"
    payload: str = EMPTY_PAYLOAD
    payload_hash: str = EMPTY_PAYLOAD_HASH
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    idempotency_key: str | None = None
    scheduled_at: datetime | None = None
    concurrency_key: str | None = None
    ttl_secs: int | None = None
    max_attempts_override: int | None = None
    timeout_secs_override: int | None = None
    debug_mode: bool = False
    batch_id: str | None = None
    continuation_of: str | None = None
    lineage_depth: int = 0
    traceparent: str | None = None  # a valid trigger header (accepted_traceparent); None = a new trace

    @property
    def correlation(self) -> Correlation:
        return correlation_of(self.idempotency_key, self.metadata)


def job_ttl(job: Job, requested_secs: int | None = None) -> int | None:
    """§5.10: the trigger's ``ttl_secs`` if > 0, else the job's ``run_ttl_secs``; ``None`` = never expires."""
    if requested_secs:
        return requested_secs
    return job.run_ttl_secs or None


def initial_status(dependencies_hold: bool, scheduled_at: datetime | None, now: datetime) -> RunStatus:
    if not dependencies_hold:
        return RunStatus.WAITING
    if scheduled_at is not None and scheduled_at > now:
        return RunStatus.DELAYED
    return RunStatus.QUEUED


def creation_expiry(status: RunStatus, ttl_secs: int | None, start: datetime) -> datetime | None:
    """``expires_at`` at creation: ``start`` + TTL; ``waiting`` runs get theirs when released."""
    if not ttl_secs or status is RunStatus.WAITING:
        return None
    return start + timedelta(seconds=ttl_secs)


def build_run_row(job: Job, inputs: RunInputs, status: RunStatus, now: datetime, *, run_id: str | None,
                  expiry_start: datetime | None = None) -> dict[str, Any]:
    """A ``runs`` row (ORM attribute names) for ``sa.insert(Run)``; ``run_id`` from ``uuid7s``, one call for a
    whole batch of rows (``None``: a preview). ``expiry_start`` defaults to max(``scheduled_at``, now); cron
    passes its tick."""
    max_attempts = inputs.max_attempts_override or job.max_attempts
    initial_delay, max_delay = retry_summary(job.retry_strategy, list(job.retry_delays_secs or []), max_attempts)
    if expiry_start is None:
        expiry_start = max(inputs.scheduled_at, now) if inputs.scheduled_at is not None else now
    bookkeeping = status_columns(status, {"scheduled_at": inputs.scheduled_at}, now)
    return {
        "id": run_id,
        "job_id": job.id,
        "project_id": job.project_id,
        "status": status.value,
        "attempt": 0,
        "payload": inputs.payload,
        "payload_hash": inputs.payload_hash,
        "result": None,
        "run_metadata": inputs.metadata,
        "error": None,
        "error_class": None,
        "triggered_by": inputs.triggered_by,
        "scheduled_at": inputs.scheduled_at,
        "started_at": None,
        "finished_at": None,
        "heartbeat_at": None,
        "next_retry_at": None,
        "expires_at": creation_expiry(status, inputs.ttl_secs, expiry_start),
        "priority": inputs.priority,
        "idempotency_key": inputs.idempotency_key,
        "job_version": job.version,
        "job_version_id": job.version_id,
        "max_attempts_override": inputs.max_attempts_override,
        "timeout_secs_override": inputs.timeout_secs_override,
        "retry_backoff": job.retry_strategy,
        "retry_initial_delay_secs": initial_delay,
        "retry_max_delay_secs": max_delay,
        "execution_trace": None,
        "debug_mode": inputs.debug_mode,
        "continuation_of": inputs.continuation_of,
        "lineage_depth": inputs.lineage_depth,
        "tags": inputs.tags,
        "created_by": inputs.created_by,
        "batch_id": inputs.batch_id,
        "concurrency_key": inputs.concurrency_key,
        "created_at": now,
        "queued_at": bookkeeping.get("queued_at"),
        "due_at": bookkeeping.get("due_at"),
        "ttl_secs": inputs.ttl_secs,
        "held_at": None,
        "traceparent": inputs.traceparent or new_traceparent(),
    }


def creation_event(row: dict[str, Any], event_id: str) -> dict[str, Any]:
    return event(event_id, row["id"], "state_change", {"from": None, "to": row["status"]}, row["created_at"])


def insert_run_rows(session: Session, rows: list[dict[str, Any]], effects: Effects, *,
                    skip_existing: bool = False) -> list[dict[str, Any]]:
    """Insert runs and their creation events; queue the ``queued`` ones; return the rows inserted.

    ``skip_existing``: a row that a unique index already has (a cron tick another replica created) is left
    out silently. One row (the single-trigger hot path): one prepared statement for both the run and its
    event, each passed as one JSON parameter (binding two values instead of ~50). Many rows: one INSERT for
    the runs and one for the events, each a single parameter, the rows as one JSON array expanded by
    ``jsonb_populate_recordset`` (a 1,000-run bulk trigger would otherwise bind ~45,000 parameters).
    The statuses a run may be born in, and the bookkeeping each sets, come from the transition table.
    """
    if not rows:
        return []
    for row in rows:
        check_created(row["status"])
    if len(rows) == 1 and not skip_existing:
        run_prepared(session.connection(), _RUN_WITH_EVENT_AS_JSON,
                {"run": _as_json(_column_values(rows[0])), "event": _as_json(creation_event(rows[0], uuid7()))})
    else:
        conflict = " ON CONFLICT DO NOTHING" if skip_existing else ""
        inserted = set(session.scalars(sa.text(
            f"{CREATION_MARKER} INSERT INTO runs SELECT * FROM jsonb_populate_recordset(NULL::runs, "
            f"CAST(:rows AS jsonb)){conflict} RETURNING id"), {"rows": _as_json([_column_values(r) for r in rows])}))
        rows = [row for row in rows if row["id"] in inserted]
        if rows:
            session.execute(sa.text("INSERT INTO run_events SELECT * FROM jsonb_populate_recordset("
                                    "NULL::run_events, CAST(:rows AS jsonb))"),
                            {"rows": _as_json([creation_event(row, event_id)
                                               for row, event_id in zip(rows, uuid7s(len(rows)), strict=True)])})
    if len(rows) == 1:
        observe_runs_created(rows[0]["triggered_by"])
    else:
        observe_runs_created_by(row["triggered_by"] for row in rows)
    effects.enqueue.extend(row["id"] for row in rows if row["status"] == RunStatus.QUEUED.value)
    for row in rows:  # a delayed run: the scheduler promotes it when due
        effects.note_due(row["due_at"])
    return rows


def _as_json(value: Any) -> str:
    return json_codec.dumps(value).decode()


# One run and its creation event (column name → value, every column present, as for ``_insert_as_json``).
# The event names the run's id itself, so the two inserts need no RETURNING; PostgreSQL checks the
# event's foreign key at the end of the statement, after the run is in.
_RUN_WITH_EVENT_AS_JSON = PreparedStatement.build(
    "sluice_insert_run_with_event",
    f"{CREATION_MARKER} WITH new_run AS (INSERT INTO runs SELECT * FROM jsonb_populate_record(NULL::runs, "
    "CAST(:run AS jsonb))) "
    "INSERT INTO run_events SELECT * FROM jsonb_populate_record(NULL::run_events, CAST(:event AS jsonb))")


def create_runs(session: Session, job: Job, inputs: list[RunInputs], *, now: datetime, effects: Effects,
                has_edges: bool | None = None) -> list[dict[str, Any]]:
    """Gate ``inputs`` on the job's dependencies and insert one run each (no idempotency, no dedup)."""
    verdicts = gate_new_runs(session, job.id, [i.correlation for i in inputs], has_edges=has_edges)
    rows = [build_run_row(job, item, initial_status(v.holds, item.scheduled_at, now), now, run_id=run_id)
            for item, v, run_id in zip(inputs, verdicts, uuid7s(len(inputs)), strict=True)]
    insert_run_rows(session, rows, effects)
    return rows


def row_to_run(row: dict[str, Any]) -> Run:
    """A detached ``Run`` built from an inserted row, for rendering without a reload."""
    return Run(**row)


def row_view(row: dict[str, Any]) -> Run:
    """A read-only stand-in for ``row_to_run(row)``: the row's values as attributes (``Run``'s names),
    for code that only reads and renders the new run (the single trigger's response). Constructing an
    ORM ``Run`` costs ~100 times more; never add the result to a session."""
    return cast(Run, SimpleNamespace(**row))


def _column_values(row: dict[str, Any]) -> dict[str, Any]:
    """Core ``insert().values()`` wants column names: the ORM attribute ``run_metadata`` is ``metadata``."""
    values = dict(row)
    values["metadata"] = values.pop("run_metadata")
    return values


def create_replay_run(session: Session, original: Run, job: Job, *, actor: str, now: datetime,
                      effects: Effects, traceparent: str | None = None) -> Run:
    """A new run repeating ``original`` (§7 replay): same payload, metadata, tags, priority, concurrency
    key, debug mode and overrides; current job version; no key, no batch, no ``scheduled_at``; the replay
    request's trace (``traceparent``, already accepted) or a new one."""
    inputs = RunInputs(
        created_by=actor, triggered_by="replay", payload=original.payload, payload_hash=original.payload_hash,
        metadata=dict(original.run_metadata or {}), tags=dict(original.tags or {}), priority=original.priority,
        concurrency_key=original.concurrency_key, ttl_secs=job_ttl(job),
        max_attempts_override=original.max_attempts_override,
        timeout_secs_override=original.timeout_secs_override, debug_mode=original.debug_mode,
        continuation_of=original.id, lineage_depth=original.lineage_depth + 1, traceparent=traceparent,
    )
    return row_to_run(create_runs(session, job, [inputs], now=now, effects=effects)[0])
