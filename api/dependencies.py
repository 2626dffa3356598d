"""Dependency edge endpoints (CONTRACT §3.9): list, create, delete."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_smorest import Blueprint

from api.auth import current_principal, requires_scope
from api.context import get_session, services
from api.pagination import clamp_limit, decode_time_cursor, encode_cursor, json_response, paged_response
from api.schemas.jobs import DependencyCreateSchema, PageQuerySchema
from api.schemas.resources import schema_of
from shared import json_codec
from shared.clock import utcnow
from shared.dependencies.edges import create_edge, delete_edge, list_edges
from shared.jobs.lifecycle import require_job
from shared.jobs.resource import DEPENDENCY
from shared.runs.commit import commit_and_apply

CURSOR_KIND = "dependencies"

blp = Blueprint("dependencies", __name__, url_prefix="/v1", description="Job dependencies")


@blp.route("/jobs/<job>/dependencies", methods=["GET"])
@requires_scope("jobs:read")
@blp.arguments(PageQuerySchema(), location="query", as_kwargs=True)
@blp.response(200, schema_of(DEPENDENCY)(many=True))
def list_dependencies_view(job: str, limit: int | None = None, cursor: str | None = None) -> Response:
    """The jobs whose runs this job's new runs wait for, newest first."""
    page = clamp_limit(limit)
    session = get_session()
    found = require_job(session, current_principal(), job)
    after = decode_time_cursor(CURSOR_KIND, cursor)  # after the lookup: 404 precedes 400 (§1.5)
    rows = list_edges(session, found["id"], limit=page + 1, after=after)
    next_cursor = None
    if len(rows) > page:
        rows = rows[:page]
        next_cursor = encode_cursor(CURSOR_KIND, rows[-1]["created_at"], rows[-1]["id"])
    return paged_response(json_codec.dumps([DEPENDENCY.render(row) for row in rows]), next_cursor, page)


@blp.route("/jobs/<job>/dependencies", methods=["POST"])
@requires_scope("jobs:write")
@blp.arguments(DependencyCreateSchema())
@blp.response(201, schema_of(DEPENDENCY))
def create_dependency_view(body: dict[str, Any], job: str) -> Response:
    """Make this job's new runs wait for another job."""
    session = get_session()
    found = require_job(session, current_principal(), job)
    edge = create_edge(session, found, body["depends_on_job_id"], body.get("condition") or "completed",
                       now=utcnow())
    session.commit()
    return json_response(DEPENDENCY.render(edge), 201)


@blp.route("/jobs/<job>/dependencies/<dep_id>", methods=["DELETE"])
@requires_scope("jobs:write")
@blp.response(204)
def delete_dependency_view(job: str, dep_id: str) -> Response:
    """Remove a dependency; the job's waiting runs are re-evaluated at once."""
    session = get_session()
    found = require_job(session, current_principal(), job, for_update=True)
    effects = delete_edge(session, found, dep_id, now=utcnow())
    commit_and_apply(session, effects, services().broker)
    return Response(status=204)
