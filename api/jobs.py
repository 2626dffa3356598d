"""Jobs endpoints (CONTRACT §3.1–§3.6, §3.8): list, create, batch, enable/disable, get, PATCH, delete, clone.

Views are thin: decorators authenticate and validate (422), one domain function in ``shared.jobs.lifecycle`` does
the work, the caller's transaction is committed here, and a render function builds the body.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, request
from flask_smorest import Blueprint
from sqlalchemy.orm import Session
from werkzeug.routing import BaseConverter

from api.auth import (
    authenticated_with,
    check_project,
    current_principal,
    prefetched_row,
    prefetched_with_key,
    requires_scope,
)
from api.context import autocommit_first, get_session, services
from api.job_page import CURSOR_KIND, cut_page, find_key_and_rendered_page
from api.job_render import render_job
from api.pagination import clamp_limit, decode_time_cursor, json_response, paged_response
from api.schemas.jobs import (
    BatchToggleResultSchema,
    DeleteQuerySchema,
    JobBatchToggleSchema,
    JobCloneSchema,
    JobCreateSchema,
    JobListQuerySchema,
    JobPatchSchema,
    JobSchema,
)
from shared.clock import utcnow
from shared.errors import NotFound, SluiceError, ValidationFailed
from shared.jobs.enablement import set_jobs_enabled
from shared.jobs.lifecycle import clone_job, create_job, create_jobs_batch, delete_job, patch_job
from shared.jobs.store import find_key_and_job, list_job_records
from shared.runs.commit import commit_and_apply

MAX_BATCH = 100


class JobRefConverter(BaseConverter):
    """``{job}``: an id or slug, but never a literal sibling route (§1.1: ``GET /v1/jobs/batch`` is 405)."""

    regex = r"(?!(?:batch|batch-enable|batch-disable)$)[^/]+"


blp = Blueprint("jobs", __name__, url_prefix="/v1", description="Jobs (CONTRACT §3)")
blp.record_once(lambda state: state.app.url_map.converters.setdefault("jobref", JobRefConverter))


def _prefetch_page(session: Session, digest: str) -> tuple[Any, Any] | None:
    """For a list request without filters: the key and the page it asks for, rendered, in one statement."""
    args = request.args
    if session.get_bind().dialect.name != "postgresql":  # LATERAL: SQLite reads the key, then the page
        return None
    if not set(args) <= {"limit", "cursor"} or len(args) != len(list(args.items(multi=True))):
        return None
    raw_limit = args.get("limit")
    if raw_limit is not None and not (raw_limit.isascii() and raw_limit.isdigit() and int(raw_limit) >= 1):
        return None  # the view's arguments refuse it, after authentication
    try:
        after = decode_time_cursor(CURSOR_KIND, args.get("cursor"))
    except SluiceError:
        return None
    page = clamp_limit(None if raw_limit is None else int(raw_limit))
    key, jobs = find_key_and_rendered_page(session, digest, limit=page + 1, after=after)
    return key, ((page, after), jobs)


@blp.route("/jobs", methods=["GET"])
@requires_scope("jobs:read")
@prefetched_with_key(_prefetch_page)
@blp.arguments(JobListQuerySchema(), location="query", as_kwargs=True)
@blp.response(200, JobSchema(many=True))
def list_jobs_view(limit: int | None = None, cursor: str | None = None, project_id: str | None = None,
                   slug: str | None = None, tag_key: str | None = None, tag_value: str | None = None,
                   enabled: bool | None = None) -> Response:
    """List the project's jobs, newest first (§3.1, §1.6)."""
    check_project(project_id)
    page = clamp_limit(limit)
    after = decode_time_cursor(CURSOR_KIND, cursor)
    prefetched = prefetched_row()  # ((page, after) it read, rendered jobs) when the query had no filters
    unfiltered = all(value is None for value in (slug, tag_key, tag_value, enabled))
    if prefetched is not None and unfiltered and prefetched[0] == (page, after):
        jobs = prefetched[1]
    else:
        rows = list_job_records(get_session(), current_principal().project_id, limit=page + 1, after=after,
                                slug=slug, tag_key=tag_key, tag_value=tag_value, enabled=enabled)
        jobs = [render_job(row) for row in rows]
    jobs, next_cursor = cut_page(jobs, page)
    return paged_response(jobs, next_cursor, page)


@blp.route("/jobs", methods=["POST"])
@autocommit_first
@requires_scope("jobs:write")
@blp.arguments(JobCreateSchema())
@blp.response(201, JobSchema)
def create_job_view(body: dict[str, Any]) -> Response:
    """Create a job (§3.2). Autocommit: on PostgreSQL the job and its version are one statement."""
    session = get_session()
    job = create_job(session, current_principal(), body, now=utcnow(),
                     allow_private=services().settings.allow_private_endpoints)
    session.commit()
    return json_response(render_job(job), 201, {"Location": f"/v1/jobs/{job['id']}"})


def _batch_items() -> tuple[list[Any], bool]:
    """The batch body's items and whether it used the ``{"jobs": [...]}`` form (§3.3); 422 otherwise."""
    body = g.get("body")
    wrapped = isinstance(body, dict)
    items = body.get("jobs") if wrapped else body
    if not isinstance(items, list):
        message = 'Must be an array of jobs or an object with a "jobs" array.'
        raise ValidationFailed({"jobs": [message]} if wrapped else {"_schema": [message]})
    if not 1 <= len(items) <= MAX_BATCH:
        message = f"Must hold 1 to {MAX_BATCH} jobs."
        raise ValidationFailed({"jobs": [message]} if wrapped else {"_schema": [message]})
    return items, wrapped


@blp.route("/jobs/batch", methods=["POST"])
@requires_scope("jobs:write")
@blp.doc(requestBody={"required": True, "content": {"application/json": {"schema": {
    "oneOf": [{"type": "array", "items": {"$ref": "#/components/schemas/JobCreate"}, "maxItems": MAX_BATCH},
              {"type": "object", "properties": {"jobs": {"type": "array", "maxItems": MAX_BATCH,
                                                         "items": {"$ref": "#/components/schemas/JobCreate"}}}}]}}}})
@blp.response(201, JobSchema(many=True))
def batch_create_view() -> Response:
    """Create up to 100 jobs atomically (§3.3): all or none; failures reported by index."""
    items, wrapped = _batch_items()
    schema = JobCreateSchema()
    loaded: list[dict[str, Any]] = []
    errors: dict[str, Any] = {}
    for index, item in enumerate(items):
        item_errors = schema.validate(item) if isinstance(item, dict) else {"_schema": ["Invalid input type."]}
        if item_errors:
            errors[str(index)] = item_errors
        else:
            loaded.append(schema.load(item))
    try:
        if errors:
            raise ValidationFailed(errors, "Validation failed for some jobs; none were created")
        session = get_session()
        jobs = create_jobs_batch(session, current_principal(), loaded, now=utcnow(),
                                 allow_private=services().settings.allow_private_endpoints)
    except ValidationFailed as exc:
        raise ValidationFailed({"jobs": exc.errors} if wrapped else exc.errors, exc.message) from None
    session.commit()
    return json_response([render_job(job) for job in jobs], 201)


def _toggle(body: dict[str, Any], enabled: bool) -> Response:
    session = get_session()
    refs = body.get("ids") if "ids" in body else body.get("job_ids")
    updated, effects = set_jobs_enabled(session, current_principal(), refs or [], enabled, now=utcnow())
    commit_and_apply(session, effects, services().broker)
    return json_response({"updated": updated})


@blp.route("/jobs/batch-enable", methods=["POST"])
@requires_scope("jobs:write")
@blp.arguments(JobBatchToggleSchema())
@blp.response(200, BatchToggleResultSchema)
def batch_enable_view(body: dict[str, Any]) -> Response:
    """Enable jobs by id or slug (§3.4); held runs are enqueued again (§5.12)."""
    return _toggle(body, True)


@blp.route("/jobs/batch-disable", methods=["POST"])
@requires_scope("jobs:write")
@blp.arguments(JobBatchToggleSchema())
@blp.response(200, BatchToggleResultSchema)
def batch_disable_view(body: dict[str, Any]) -> Response:
    """Disable jobs by id or slug (§3.4): cron stops, ready runs are held (§5.12)."""
    return _toggle(body, False)


@blp.route("/jobs/<jobref:job>", methods=["GET"])
@requires_scope("jobs:read")
@authenticated_with(find_key_and_job)
@blp.response(200, JobSchema)
def get_job_view(job: str) -> Response:
    """Get a job by id or slug (§3.1). The job is read with the API key, in one statement."""
    found = prefetched_row()
    if found["id"] is None:
        raise NotFound("job not found")
    return json_response(render_job(found))


@blp.route("/jobs/<jobref:job>", methods=["PATCH"])
@requires_scope("jobs:write")
@blp.arguments(JobPatchSchema())
@blp.response(200, JobSchema)
def patch_job_view(body: dict[str, Any], job: str) -> Response:
    """Partial update (§3.5); a change writes a new version, no change writes nothing."""
    if g.get("body") is None:  # a JSON `null` body reaches here as {}: the root must be an object
        raise ValidationFailed({"_schema": ["Invalid input type."]})
    session = get_session()
    updated, effects = patch_job(session, current_principal(), job, body, now=utcnow(),
                                 allow_private=services().settings.allow_private_endpoints)
    commit_and_apply(session, effects, services().broker)
    return json_response(render_job(updated))


@blp.route("/jobs/<jobref:job>", methods=["DELETE"])
@requires_scope("jobs:write")
@blp.arguments(DeleteQuerySchema(), location="query", as_kwargs=True)
@blp.response(204)
def delete_job_view(job: str, force: bool = False) -> Response:
    """Hard delete (§3.6); 409 with active runs unless ``?force=true``."""
    session = get_session()
    effects = delete_job(session, current_principal(), job, force=force, now=utcnow())
    commit_and_apply(session, effects, services().broker)
    return Response(status=204)


@blp.route("/jobs/<job>/clone", methods=["POST"])
@requires_scope("jobs:write")
@blp.arguments(JobCloneSchema())
@blp.response(201, JobSchema)
def clone_job_view(body: dict[str, Any], job: str) -> Response:
    """Copy a job's configuration under a new name and slug (§3.8)."""
    session = get_session()
    created = clone_job(session, current_principal(), job, body, now=utcnow(),
                        allow_private=services().settings.allow_private_endpoints)
    session.commit()
    return json_response(render_job(created), 201, {"Location": f"/v1/jobs/{created['id']}"})
