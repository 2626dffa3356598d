"""The manual trigger pipeline (CONTRACT §4.1–4.3, §4.5): from a validated request body to a run.

Order (§4.2): disabled 409 → payload vs ``payload_schema`` 422 → canonical payload, hash, merges,
``scheduled_at`` → dry run → idempotency → dedup → dependencies → insert. The caller has already
resolved the job (404) and checked the body's field schema (422), and owns the transaction.

Concurrency: identical concurrent requests are serialised by transaction-scoped advisory locks covering
the job's idempotency key and then its payload hash (striped: ``shared.db.locks``), held until commit;
under READ COMMITTED the second request's lookup runs after the first one's commit and finds its run.
A request without a key and without a dedup window takes no lock at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from shared.db.locks import lock_all, striped
from shared.db.models import Job, Run
from shared.db.prepared import PreparedQuery
from shared.dependencies.gating import edges_of, evaluate_many
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.jobs.store import key_and_job_sql, ref_params
from shared.runs.creation import (
    RunInputs,
    build_run_row,
    create_runs,
    initial_status,
    job_ttl,
    row_to_run,
    row_view,
)
from shared.runs.effects import Effects
from shared.runs.status import ACTIVE
from shared.runs.trace_context import accepted_traceparent
from shared.schedules.cron import TICK_KEY_PREFIX
from shared.triggers.payloads import canonical_payload, payload_hash, payload_size_error, schema_errors

MAX_SCHEDULE_AHEAD = timedelta(days=30)
IDEMPOTENCY_WINDOW = timedelta(hours=24)
RESERVED_KEY_PREFIX = TICK_KEY_PREFIX
DISABLED_MESSAGE = "job is disabled; enable it before triggering runs"
_ACTIVE_VALUES = [s.value for s in ACTIVE]


@dataclass
class TriggerOutcome:
    """What a trigger produced: a new run, an existing one (key or dedup hit), or a dry-run preview."""

    run: Run
    created: bool
    idempotency_hit: bool = False
    dry_run: bool = False


def trigger_field_errors(body: dict[str, Any], now: datetime) -> dict[str, list[str]]:
    """§4.1 rules that need the clock or two fields at once (422): ``scheduled_at`` vs ``delay_secs``."""
    errors: dict[str, list[str]] = {}
    scheduled_at = body.get("scheduled_at")
    if scheduled_at is not None and body.get("delay_secs") is not None:
        errors["delay_secs"] = ["Must not be combined with scheduled_at."]
    if scheduled_at is not None and scheduled_at > now + MAX_SCHEDULE_AHEAD:
        errors["scheduled_at"] = ["Must be at most 30 days in the future."]
    return errors


def idempotency_key_error(key: str) -> str | None:
    if not 1 <= len(key) <= 256:
        return "Must be 1..256 characters."
    if key.startswith(RESERVED_KEY_PREFIX):
        return "Must not start with 'cron:' (reserved for cron ticks)."
    return None


def ensure_enabled(job: Job) -> None:
    if not job.enabled:
        raise Conflict(DISABLED_MESSAGE)


def prepare_inputs(job: Job, body: dict[str, Any], *, actor: str, now: datetime,
                   traceparent: str | None = None) -> tuple[RunInputs, list[str]]:
    """Steps 4–5 for one request or bulk item: ``(inputs, payload errors)``; errors non-empty = 422.
    ``traceparent``: the request's header, as received (an invalid one means a new trace)."""
    payload = body.get("payload")
    if payload is None:
        payload = {}
    errors = schema_errors(job.payload_schema, payload)
    if errors:
        return RunInputs(created_by=actor), errors
    try:
        canonical = canonical_payload(payload)
    except ValueError:
        return RunInputs(created_by=actor), ["$: numbers must be finite (NaN and Infinity are not JSON)."]
    size_error = payload_size_error(canonical)
    if size_error:
        return RunInputs(created_by=actor), [size_error]
    metadata = {**(job.default_run_metadata or {}), **(body.get("metadata") or {})}
    if "dependency_key" not in metadata and isinstance(payload, dict) \
            and isinstance(payload.get("dependency_key"), str):
        metadata["dependency_key"] = payload["dependency_key"]
    scheduled_at = body.get("scheduled_at")
    if scheduled_at is not None:
        scheduled_at = max(scheduled_at, now)  # a past start means now, stored as now
    elif body.get("delay_secs") is not None:
        scheduled_at = now + timedelta(seconds=body["delay_secs"])
    return RunInputs(
        created_by=actor, triggered_by="manual", payload=canonical, payload_hash=payload_hash(canonical),
        metadata=metadata, tags={**(job.tags or {}), **(body.get("tags") or {})},
        priority=body.get("priority") or 0, idempotency_key=body.get("idempotency_key") or None,
        scheduled_at=scheduled_at, concurrency_key=body.get("concurrency_key") or None,
        ttl_secs=job_ttl(job, body.get("ttl_secs")), max_attempts_override=body.get("max_attempts_override"),
        timeout_secs_override=body.get("timeout_secs_override"), debug_mode=bool(body.get("debug_mode")),
        traceparent=accepted_traceparent(traceparent),
    ), []


def idempotency_match_clause(now: datetime) -> sa.ColumnElement[bool]:
    """§4.5: non-terminal, or terminal with ``finished_at`` < 24 h ago and not ``expired``."""
    return sa.or_(Run.status.in_(_ACTIVE_VALUES),
                  sa.and_(Run.finished_at > now - IDEMPOTENCY_WINDOW, Run.status != "expired"))


def find_idempotent_runs(session: Session, job_id: str, keys: list[str], now: datetime) -> dict[str, Run]:
    """The newest matching run per key, in one query."""
    if not keys:
        return {}
    query = (sa.select(Run).where(Run.job_id == job_id, Run.idempotency_key.in_(keys),
                                  idempotency_match_clause(now))
             .order_by(Run.created_at.desc(), Run.id.desc()))
    found: dict[str, Run] = {}
    for run in session.scalars(query):
        found.setdefault(run.idempotency_key or "", run)
    return found


def find_dedup_runs(session: Session, job: Job, payloads: dict[str, str], now: datetime) -> dict[str, Run]:
    """The newest run of ``job`` per payload hash with a byte-identical payload inside the dedup window."""
    if not payloads or not job.dedup_window_secs:
        return {}
    query = (sa.select(Run).where(Run.job_id == job.id, Run.payload_hash.in_(list(payloads)),
                                  Run.created_at >= now - timedelta(seconds=job.dedup_window_secs))
             .order_by(Run.created_at.desc(), Run.id.desc()))
    found: dict[str, Run] = {}
    for run in session.scalars(query):
        if run.payload_hash not in found and run.payload == payloads[run.payload_hash]:
            found[run.payload_hash] = run
    return found


def preview_run(session: Session, job: Job, inputs: RunInputs, now: datetime) -> Run:
    """The run a trigger would create (§4.3 dry run): nothing stored, enqueued or locked."""
    verdict = evaluate_many(session, edges_of(session, job.id), [inputs.correlation])[0]
    row = build_run_row(job, inputs, initial_status(verdict.holds, inputs.scheduled_at, now), now, run_id=None)
    return row_to_run(row)


def _key_and_job_statement(by_id: bool) -> PreparedQuery:
    """``shared.jobs.store.key_and_job_sql`` plus ``has_edges``: it runs on every trigger, prepared
    (``shared.db.prepared.PreparedQuery``)."""
    has_edges = ", EXISTS (SELECT 1 FROM job_dependencies d WHERE d.job_id = j.id) AS has_edges"
    return PreparedQuery.build(f"sluice_trigger_key_job_{'id' if by_id else 'slug'}",
                               key_and_job_sql(by_id, has_edges))


# Built once (compiled once, then only bound): these lookups run on every trigger.
_KEY_AND_JOB = {by_id: _key_and_job_statement(by_id) for by_id in (False, True)}


def find_key_and_trigger_job(session: Session, digest: str, ref: str) -> Row[Any] | None:
    """Authentication and the job lookup in one round trip: the key with this digest (columns
    ``shared.apikeys.KEY_FIELDS``), every column of the job that ``ref`` names in the key's project (all
    NULL if none) and ``has_edges``. ``None`` = unknown key."""
    params = ref_params(ref)
    params["digest"] = digest
    return _KEY_AND_JOB[params["as_id"] is not None].first(session.connection(), params)  # type: ignore[no-any-return]


def trigger_job_of(row: Row[Any]) -> tuple[Job, bool]:
    """The job and ``has_edges`` of a ``find_key_and_trigger_job`` row; 404 if the project has no such job.

    The job is the row itself: a Core row of every ``jobs`` column reads exactly like a detached ``Job``
    (attribute per column), which is all the trigger pipeline does with it (read, never flush).
    """
    if row.id is None:
        raise NotFound("job not found")
    return cast(Job, row), bool(row.has_edges)


def needs_transaction(job: Job, body: dict[str, Any], has_edges: bool) -> bool:
    """Whether ``trigger_run`` may take advisory locks (idempotency key, dedup window, dependency edges)
    and so must run inside a transaction. Otherwise its only write is one atomic INSERT (run + creation
    event, ``shared.runs.creation.insert_run_rows``), which autocommit runs without BEGIN/COMMIT."""
    return bool(has_edges or body.get("idempotency_key") or job.dedup_window_secs)


def trigger_run(session: Session, job: Job, body: dict[str, Any], *, actor: str, now: datetime,
                effects: Effects, has_edges: bool | None = None, traceparent: str | None = None) -> TriggerOutcome:
    """Run §4.2 steps 3–10 (before the commit) for one request; ``body`` is schema-validated and carries
    the effective ``idempotency_key`` (header already applied). ``has_edges`` comes from
    ``find_key_and_trigger_job`` (``None`` = look it up); ``traceparent`` is the request's header."""
    ensure_enabled(job)
    inputs, errors = prepare_inputs(job, body, actor=actor, now=now, traceparent=traceparent)
    if errors:
        raise ValidationFailed({"payload": errors}, "payload does not satisfy the job's payload_schema"
                               if job.payload_schema else None)
    if body.get("dry_run"):
        return TriggerOutcome(preview_run(session, job, inputs, now), created=False, dry_run=True)
    key = inputs.idempotency_key
    if key is not None:
        lock_all(session, [striped("idem", job.id, key)])
        hit = find_idempotent_runs(session, job.id, [key], now).get(key)
        if hit is not None:
            return TriggerOutcome(hit, created=False, idempotency_hit=True)
    if job.dedup_window_secs:
        lock_all(session, [striped("dedup", job.id, inputs.payload_hash)])
        dup = find_dedup_runs(session, job, {inputs.payload_hash: inputs.payload}, now).get(inputs.payload_hash)
        if dup is not None:
            return TriggerOutcome(dup, created=False)
    row = create_runs(session, job, [inputs], now=now, effects=effects, has_edges=has_edges)[0]
    return TriggerOutcome(row_view(row), created=True)  # rendered, never flushed

