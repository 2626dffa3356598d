"""Trigger request schemas (CONTRACT §4.1, §4.4). Strict types, no coercion (§1.1)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate

from api.schemas.fields import AnyJSON, BaseSchema, StrictBoolean, StrictInteger, StrictString, StringMap, Timestamp
from shared.clock import utcnow
from shared.triggers.manual import idempotency_key_error, trigger_field_errors

IDEMPOTENCY_HEADER = "Idempotency-Key"
TRACEPARENT_HEADER = "traceparent"  # W3C Trace Context: the run joins the caller's trace (shared.runs.trace_context)


def _check_key(value: str) -> None:
    problem = idempotency_key_error(value)
    if problem:
        raise ma.ValidationError(problem)


class TriggerItemSchema(BaseSchema):
    """The §4.1 fields (``dry_run`` excepted). ``null`` means absent."""

    payload = AnyJSON(allow_none=True, metadata={"description": "Any JSON; null → {}"})
    idempotency_key = StrictString(allow_none=True, validate=_check_key)
    priority = StrictInteger(allow_none=True, validate=validate.Range(0, 10))
    scheduled_at = Timestamp(allow_none=True)
    delay_secs = StrictInteger(allow_none=True, validate=validate.Range(0, 2_592_000))
    metadata = StringMap(allow_none=True, max_entries=50, max_value_len=1024)
    tags = StringMap(allow_none=True, max_entries=20, max_value_len=256)
    concurrency_key = StrictString(allow_none=True, validate=validate.Length(max=256))
    ttl_secs = StrictInteger(allow_none=True, validate=validate.Range(0, 2_592_000))
    max_attempts_override = StrictInteger(allow_none=True, validate=validate.Range(1, 100))
    timeout_secs_override = StrictInteger(allow_none=True, validate=validate.Range(1, 86_400))
    debug_mode = StrictBoolean(allow_none=True)

    @ma.validates_schema(skip_on_field_errors=False)
    def _cross_field(self, data: dict[str, Any], **_kwargs: Any) -> None:
        errors = trigger_field_errors(data, utcnow())
        if errors:
            raise ma.ValidationError(errors)


class TriggerSchema(TriggerItemSchema):
    dry_run = StrictBoolean(allow_none=True)


class BulkTriggerSchema(BaseSchema):
    """``items`` is checked here for shape and count; each item is validated after the job lookup."""

    items = ma.fields.List(ma.fields.Raw(), required=True, validate=validate.Length(1, 1000),
                           metadata={"items": {"type": "object"}, "description": "1..1000 trigger items"})
