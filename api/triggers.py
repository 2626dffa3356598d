"""Trigger endpoints (CONTRACT §4.1–4.4): ``POST /v1/jobs/{job}/trigger`` and ``…/trigger/bulk``."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import Response, request
from flask_smorest import Blueprint

from api.auth import authenticated_with, current_principal, prefetched_row, requires_scope
from api.context import autocommit_first, get_session, services, transactional_session
from api.gate import optional_body
from api.pagination import json_response
from api.resources import BULK_TRIGGER_RESULT, TRIGGER_RESULT
from api.schemas.resources import schema_of
from api.schemas.triggers import (
    IDEMPOTENCY_HEADER,
    TRACEPARENT_HEADER,
    BulkTriggerSchema,
    TriggerItemSchema,
    TriggerSchema,
)
from shared.clock import utcnow
from shared.errors import ValidationFailed
from shared.jobs.lookup import get_job
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.triggers.bulk import trigger_bulk
from shared.triggers.manual import (
    ensure_enabled,
    find_key_and_trigger_job,
    idempotency_key_error,
    needs_transaction,
    trigger_job_of,
    trigger_run,
)

blp = Blueprint("triggers", __name__, url_prefix="/v1", description="Trigger runs of a job")
_item_schema = TriggerItemSchema()
_PAYLOAD_ONLY = frozenset({"payload"})


def _header_key() -> str | None:
    """The ``Idempotency-Key`` header (wins over the body field); invalid → 422 under its name."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    problem = idempotency_key_error(key)
    if problem:
        raise ValidationFailed({IDEMPOTENCY_HEADER: [problem]})
    return key


@blp.route("/jobs/<job>/trigger", methods=["POST"])
@optional_body
@autocommit_first
@requires_scope("jobs:trigger")
@authenticated_with(find_key_and_trigger_job)
@blp.arguments(TriggerSchema(), required=False)  # no body: an empty trigger
@blp.response(201, schema_of(TRIGGER_RESULT), description="A new run")
@blp.alt_response(200, schema=schema_of(TRIGGER_RESULT),
                  description="No new run: the run an idempotency key or the dedup window matched, or a dry run")
def trigger_view(body: dict[str, Any], job: str) -> Response:
    """Trigger a run of the job."""
    header_key = _header_key()
    if header_key is not None:
        body["idempotency_key"] = header_key
    principal = current_principal()
    found, has_edges = trigger_job_of(prefetched_row())  # read with the API key (api.auth)
    # The common trigger is one atomic INSERT: it runs in autocommit (@autocommit_first) unless locks are needed.
    session = transactional_session() if needs_transaction(found, body, has_edges) else get_session()
    effects = Effects()
    outcome = trigger_run(session, found, body, actor=principal.actor, now=utcnow(), effects=effects,
                          has_edges=has_edges, traceparent=request.headers.get(TRACEPARENT_HEADER))
    if not outcome.created:
        session.commit()  # ends the transaction (and its advisory locks) early
        return json_response(TRIGGER_RESULT.render(outcome), 200)
    commit_and_apply(session, effects, services().broker)
    return json_response(TRIGGER_RESULT.render(outcome), 201, {"Location": f"/v1/runs/{outcome.run.id}"})


def _validate_items(raw_items: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Field validation of every bulk item, errors by index (``dry_run`` is refused in items)."""
    items: list[dict[str, Any]] = []
    errors: dict[str, Any] = {}
    for index, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            errors[str(index)] = {"_schema": ["Each item must be an object."]}
            items.append({})
            continue
        if raw.keys() <= _PAYLOAD_ONLY:  # the common item: nothing to check but the payload (later)
            items.append({"payload": raw.get("payload")})
            continue
        try:
            item = _item_schema.load(raw)
        except ma.ValidationError as exc:
            item, messages = {}, dict(exc.messages) if isinstance(exc.messages, dict) else {"_schema": exc.messages}
            errors[str(index)] = messages
        if "dry_run" in raw:
            errors.setdefault(str(index), {})["dry_run"] = ["Not allowed in a bulk item."]
        items.append(item)
    return items, errors


@blp.route("/jobs/<job>/trigger/bulk", methods=["POST"])
@requires_scope("jobs:trigger")
@blp.arguments(BulkTriggerSchema())
@blp.response(201, schema_of(BULK_TRIGGER_RESULT))
def bulk_trigger_view(body: dict[str, Any], job: str) -> Response:
    """Trigger up to 1,000 runs of the job at once: all or none."""
    session = get_session()
    principal = current_principal()
    found = get_job(session, principal.project_id, job)
    ensure_enabled(found)  # 409 comes before item validation (§4.4)
    items, item_errors = _validate_items(body["items"])
    effects = Effects()
    outcome = trigger_bulk(session, found, items, actor=principal.actor, now=utcnow(), effects=effects,
                           item_errors=item_errors)
    commit_and_apply(session, effects, services().broker)
    return json_response(outcome.to_dict(), 201)
