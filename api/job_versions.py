"""Job version endpoints (CONTRACT §3.7): every stored snapshot, the current one included."""

from __future__ import annotations

from flask import Response
from flask_smorest import Blueprint

from api.auth import current_principal, requires_scope
from api.context import get_session
from api.pagination import clamp_limit, decode_cursor, encode_cursor, json_response, paged_response
from api.schemas.jobs import PageQuerySchema
from api.schemas.resources import schema_of
from shared import json_codec
from shared.errors import BadRequest, NotFound
from shared.jobs.lifecycle import require_job
from shared.jobs.resource import VERSION, render_version
from shared.jobs.versions import find_version, list_versions

CURSOR_KIND = "versions"

blp = Blueprint("job_versions", __name__, url_prefix="/v1", description="Job versions")


def _cursor_version(cursor: str | None) -> int | None:
    position = decode_cursor(CURSOR_KIND, cursor)
    if position is None:
        return None
    if len(position) != 1 or isinstance(position[0], bool) or not isinstance(position[0], int):
        raise BadRequest("cursor: malformed cursor")
    return int(position[0])


@blp.route("/jobs/<job>/versions", methods=["GET"])
@requires_scope("jobs:read")
@blp.arguments(PageQuerySchema(), location="query", as_kwargs=True)
@blp.response(200, schema_of(VERSION)(many=True))
def list_versions_view(job: str, limit: int | None = None, cursor: str | None = None) -> Response:
    """All versions of the job, current first."""
    page = clamp_limit(limit)
    session = get_session()
    found = require_job(session, current_principal(), job)
    before = _cursor_version(cursor)  # after the lookup: 404 precedes 400 (§1.5)
    rows = list_versions(session, found["id"], limit=page + 1, before_version=before)
    next_cursor = None
    if len(rows) > page:
        rows = rows[:page]
        next_cursor = encode_cursor(CURSOR_KIND, rows[-1]["version"])
    return paged_response(json_codec.dumps([render_version(row) for row in rows]), next_cursor, page)


@blp.route("/jobs/<job>/versions/<version_id>", methods=["GET"])
@requires_scope("jobs:read")
@blp.response(200, schema_of(VERSION))
def get_version_view(job: str, version_id: str) -> Response:
    """One version of the job by its `ver_…` id."""
    session = get_session()
    found = require_job(session, current_principal(), job)
    version = find_version(session, found["id"], version_id)
    if version is None:
        raise NotFound("version not found")
    return json_response(render_version(version))
