"""Run resource, run event and runs-API request schemas (CONTRACT §4.6, §4.8, §7).

Responses are rendered by ``shared.runs.view``; these schemas document them in /openapi.json.
"""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from api.schemas.fields import BaseSchema, QueryInteger, StrictString

_TS = {"format": "date-time"}


class RunSchema(ma.Schema):
    id = ma.fields.String()
    job_id = ma.fields.String()
    project_id = ma.fields.String()
    status = ma.fields.String()
    attempt = ma.fields.Integer()
    payload = ma.fields.Raw()
    result = ma.fields.Raw(allow_none=True)
    metadata = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    error = ma.fields.String(allow_none=True)
    error_class = ma.fields.String(allow_none=True)
    triggered_by = ma.fields.String()
    scheduled_at = ma.fields.String(allow_none=True, metadata=_TS)
    started_at = ma.fields.String(allow_none=True, metadata=_TS)
    finished_at = ma.fields.String(allow_none=True, metadata=_TS)
    heartbeat_at = ma.fields.String(allow_none=True, metadata=_TS)
    next_retry_at = ma.fields.String(allow_none=True, metadata=_TS)
    expires_at = ma.fields.String(allow_none=True, metadata=_TS)
    parent_run_id = ma.fields.String(allow_none=True)
    workflow_step_run_id = ma.fields.String(allow_none=True)
    priority = ma.fields.Integer()
    idempotency_key = ma.fields.String(allow_none=True)
    job_version = ma.fields.Integer()
    job_version_id = ma.fields.String()
    max_attempts_override = ma.fields.Integer(allow_none=True)
    timeout_secs_override = ma.fields.Integer(allow_none=True)
    retry_backoff = ma.fields.String()
    retry_initial_delay_secs = ma.fields.Integer()
    retry_max_delay_secs = ma.fields.Integer()
    execution_trace = ma.fields.Dict(allow_none=True)
    debug_mode = ma.fields.Boolean()
    continuation_of = ma.fields.String(allow_none=True)
    lineage_depth = ma.fields.Integer()
    tags = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String())
    created_by = ma.fields.String()
    batch_id = ma.fields.String(allow_none=True)
    concurrency_key = ma.fields.String(allow_none=True)
    created_at = ma.fields.String(metadata=_TS)


class RunEventSchema(ma.Schema):
    id = ma.fields.String()
    run_id = ma.fields.String()
    type = ma.fields.String()
    message = ma.fields.String(allow_none=True)
    data = ma.fields.Dict()
    created_at = ma.fields.String(metadata=_TS)


class PageQuerySchema(BaseSchema):
    limit = QueryInteger(validate=validate.Range(min=1))
    cursor = ma.fields.String()


class RunFilterQuerySchema(PageQuerySchema):
    """§7 filters (AND-combined); timestamps and statuses are checked by ``shared.runs.queries``."""

    status = ma.fields.String(metadata={"description": "Comma-separated statuses"})
    triggered_by = ma.fields.String(validate=validate.OneOf(["manual", "cron", "replay"]))
    batch_id = ma.fields.String()
    tag_key = ma.fields.String()
    tag_value = ma.fields.String()
    created_after = ma.fields.String(metadata={"description": "RFC 3339, inclusive"})
    created_before = ma.fields.String(metadata={"description": "RFC 3339, exclusive"})
    project_id = ma.fields.String()


class RunListQuerySchema(RunFilterQuerySchema):
    job_id = ma.fields.String(metadata={"description": "Job id or slug"})


class RunIdsSchema(BaseSchema):
    run_ids = ma.fields.List(StrictString(), required=True, validate=validate.Length(1, 100))


class BulkCancelItemSchema(ma.Schema):
    id = ma.fields.String()
    status = ma.fields.String(allow_none=True)
    error = ma.fields.String(allow_none=True)


class BulkCancelResultSchema(ma.Schema):
    results = ma.fields.List(ma.fields.Nested(BulkCancelItemSchema))
    total = ma.fields.Integer()
    canceled = ma.fields.Integer()
    failed = ma.fields.Integer()


class BulkReplayItemSchema(ma.Schema):
    original_run_id = ma.fields.String()
    new_run_id = ma.fields.String(allow_none=True)
    status = ma.fields.String()
    error = ma.fields.String(allow_none=True)


class BulkReplayResultSchema(ma.Schema):
    results = ma.fields.List(ma.fields.Nested(BulkReplayItemSchema))
    total = ma.fields.Integer()
    replayed = ma.fields.Integer()
