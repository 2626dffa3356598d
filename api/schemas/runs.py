"""Runs-API request schemas (CONTRACT §7); the responses are described in ``shared.runs.resource``."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate

from api.schemas.fields import BaseSchema, QueryInteger, StrictString


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
