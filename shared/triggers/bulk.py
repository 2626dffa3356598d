"""Bulk trigger (CONTRACT §4.4): up to 1000 items validated all-or-nothing, then created in ONE transaction.

Round trips and locks do not grow with the item count: one statement taking the idempotency keys' locks
(striped: ``shared.db.locks``) and one idempotency query for every key, the same for the payload hashes,
one dependency evaluation, one ``batches`` row, one INSERT of runs, one INSERT of creation events; the
caller commits and enqueues every ``queued`` run in one Redis pipeline.

Items are resolved in order, so an item may hit a run created by an earlier item of the same request:
a repeated key is an idempotency hit on that run, a repeated payload (dedup window set) a dedup hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.locks import lock_all, striped
from shared.db.models import Batch, Job
from shared.errors import ValidationFailed
from shared.ids import uuid7
from shared.runs.creation import RunInputs, create_runs
from shared.runs.effects import Effects
from shared.triggers.manual import ensure_enabled, find_dedup_runs, find_idempotent_runs, prepare_inputs


@dataclass
class BulkItemResult:
    id: str
    status: str
    idempotency_hit: bool


@dataclass
class BulkOutcome:
    batch_id: str
    results: list[BulkItemResult]
    created: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "results": [{"id": r.id, "status": r.status, "run_token": None, "idempotency_hit": r.idempotency_hit}
                        for r in self.results],
            "total": len(self.results),
            "created": self.created,
        }


def prepare_bulk(job: Job, items: list[dict[str, Any]], *, actor: str, now: datetime,
                 item_errors: dict[str, Any]) -> list[RunInputs]:
    """Payload checks for every item, merged with the field errors already found (``item_errors``,
    by index); any error → 422 ``{"items": {"7": {...}}}`` and nothing is created."""
    errors = dict(item_errors)
    prepared: list[RunInputs] = []
    for index, item in enumerate(items):
        if str(index) in errors:
            prepared.append(RunInputs(created_by=actor))
            continue
        inputs, payload_errors = prepare_inputs(job, item, actor=actor, now=now)
        if payload_errors:
            errors[str(index)] = {"payload": payload_errors}
        prepared.append(inputs)
    if errors:
        raise ValidationFailed({"items": errors}, f"{len(errors)} of {len(items)} items are invalid; nothing was "
                                                  "created")
    return prepared


def trigger_bulk(session: Session, job: Job, items: list[dict[str, Any]], *, actor: str, now: datetime,
                 effects: Effects, item_errors: dict[str, Any] | None = None) -> BulkOutcome:
    """§4.4 after the job lookup: 409 if disabled, 422 if any item is invalid, else create (no commit)."""
    ensure_enabled(job)
    inputs = prepare_bulk(job, items, actor=actor, now=now, item_errors=item_errors or {})
    keys = sorted({i.idempotency_key for i in inputs if i.idempotency_key is not None})
    lock_all(session, [striped("idem", job.id, key) for key in keys])  # one statement, at most 16 locks
    by_key = {key: (run.id, run.status) for key, run in find_idempotent_runs(session, job.id, keys, now).items()}
    payloads = {i.payload_hash: i.payload for i in inputs} if job.dedup_window_secs else {}
    lock_all(session, [striped("dedup", job.id, h) for h in payloads])
    by_hash = {h: (run.id, run.status) for h, run in find_dedup_runs(session, job, payloads, now).items()}

    batch_id = uuid7()
    # Each item resolves to ("key", key) / ("hash", payload hash) for a hit, or ("new", index in fresh).
    # by_key / by_hash point at an existing run (id, status) or at a run this request creates (index).
    plan: list[tuple[str, Any]] = []
    fresh: list[RunInputs] = []
    found_keys: dict[str, tuple[str, str] | int] = dict(by_key)
    found_hashes: dict[str, tuple[str, str] | int] = dict(by_hash)
    for item in inputs:
        key = item.idempotency_key
        if key is not None and key in found_keys:
            plan.append(("key", key))
        elif payloads and item.payload_hash in found_hashes:
            plan.append(("hash", item.payload_hash))
        else:
            item.batch_id = batch_id
            plan.append(("new", len(fresh)))
            if key is not None:
                found_keys[key] = len(fresh)
            if payloads:
                found_hashes[item.payload_hash] = len(fresh)
            fresh.append(item)

    session.execute(sa.insert(Batch), [{"id": batch_id, "project_id": job.project_id, "job_id": job.id,
                                        "total": len(items), "created": len(fresh), "created_by": actor,
                                        "created_at": now}])
    rows = create_runs(session, job, fresh, now=now, effects=effects)
    return BulkOutcome(batch_id, _results(plan, rows, found_keys, found_hashes), len(rows))


def _results(plan: list[tuple[str, Any]], rows: list[dict[str, Any]], found_keys: dict[str, Any],
             found_hashes: dict[str, Any]) -> list[BulkItemResult]:
    def resolve(target: tuple[str, str] | int) -> tuple[str, str]:
        if isinstance(target, int):
            return rows[target]["id"], rows[target]["status"]
        return target

    results = []
    for kind, ref in plan:
        if kind == "new":
            results.append(BulkItemResult(rows[ref]["id"], rows[ref]["status"], False))
        elif kind == "key":
            results.append(BulkItemResult(*resolve(found_keys[ref]), True))
        else:
            results.append(BulkItemResult(*resolve(found_hashes[ref]), False))
    return results
