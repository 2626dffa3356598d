"""Jobs endpoints (CONTRACT §3.1–§3.6, §3.8): list, create, batch, enable/disable, get, PATCH, delete, clone.

Views are thin: decorators authenticate and validate (422), one domain function in ``shared.jobs.lifecycle``
does the work, the caller's transaction is committed here, and the Job description renders the body. The
plain list and a job read are usually answered in front of Flask (``api.front``); these views answer the
rest.
"""

from __future__ import annotations

from typing import Any

from flask import Response, g
from flask_smorest import Blueprint
from werkzeug.routing import BaseConverter

from api.auth import authenticated_with, check_project, current_principal, prefetched_row, requires_scope
from api.context import autocommit_first, get_session, services
from api.job_page import CURSOR_KIND
from api.pagination import (
    clamp_limit,
    decode_time_cursor,
    encode_cursor,
    items_within,
    json_array,
    json_response,
    paged_response,
)
from api.paths import NOT_A_JOB_SIBLING
from api.resources import BATCH_TOGGLE_RESULT
from api.schemas.jobs import (
    DeleteQuerySchema,
    JobBatchToggleSchema,
    JobCloneSchema,
    JobCreateSchema,
    JobListQuerySchema,
    JobPatchSchema,
)
from api.schemas.resources import schema_of
from shared import json_codec
from shared.clock import utcnow
from shared.errors import NotFound, ValidationFailed
from shared.jobs.batch import BatchItem, create_jobs_batch
from shared.jobs.enablement import set_jobs_enabled
from shared.jobs.lifecycle import clone_job, create_job, delete_job, patch_job
from shared.jobs.resource import JOB
from shared.jobs.store import find_key_and_job, list_job_records
from shared.runs.commit import commit_and_apply

MAX_BATCH = 100


class JobRefConverter(BaseConverter):
    """``{job}``: an id or slug, but never a literal sibling route (``GET /v1/jobs/batch`` is 405)."""

    regex = NOT_A_JOB_SIBLING + r"[^/]+"


blp = Blueprint("jobs", __name__, url_prefix="/v1", description="Jobs")
blp.record_once(lambda state: state.app.url_map.converters.setdefault("jobref", JobRefConverter))
_JOB = schema_of(JOB)


@blp.route("/jobs", methods=["GET"])
@requires_scope("jobs:read")
@blp.arguments(JobListQuerySchema(), location="query", as_kwargs=True)
@blp.response(200, _JOB(many=True))
def list_jobs_view(limit: int | None = None, cursor: str | None = None, project_id: str | None = None,
                   slug: str | None = None, tag_key: str | None = None, tag_value: str | None = None,
                   enabled: bool | None = None) -> Response:
    """List the project's jobs, newest first.

    A page holds `limit` jobs (50 unless given, at most 200); when more follow, `X-Next-Cursor` holds
    the `cursor` of the next page and `Link` its URL."""
    check_project(project_id)
    page = clamp_limit(limit)
    after = decode_time_cursor(CURSOR_KIND, cursor)
    rows = list_job_records(get_session(), current_principal().project_id, limit=page + 1, after=after,
                            slug=slug, tag_key=tag_key, tag_value=tag_value, enabled=enabled)
    jobs = [json_codec.dumps(JOB.render(row)) for row in rows[:page]]
    fitting = items_within(len(job) for job in jobs)  # the page's byte budget
    next_cursor = None
    if len(rows) > fitting:
        rows, jobs = rows[:fitting], jobs[:fitting]
        next_cursor = encode_cursor(CURSOR_KIND, rows[-1]["created_at"], rows[-1]["id"])
    return paged_response(json_array(jobs), next_cursor, page)


@blp.route("/jobs", methods=["POST"])
@autocommit_first
@requires_scope("jobs:write")
@blp.arguments(JobCreateSchema())
@blp.response(201, _JOB)
def create_job_view(body: dict[str, Any]) -> Response:
    """Create a job."""
    # Autocommit: the job and its version are one statement.
    session = get_session()
    job = create_job(session, current_principal(), body, now=utcnow(),
                     policy=services().settings.address_policy, box=services().settings.secret_box)
    session.commit()
    return json_response(JOB.render(job), 201, {"Location": f"/v1/jobs/{job['id']}"})


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
@blp.response(201, _JOB(many=True))
def batch_create_view() -> Response:
    """Create up to 100 jobs atomically: all or none; failures are reported by index."""
    items, wrapped = _batch_items()
    schema = JobCreateSchema()
    checked: list[BatchItem] = []
    for item in items:
        errors = schema.validate(item) if isinstance(item, dict) else {"_schema": ["Invalid input type."]}
        if not errors:
            checked.append(BatchItem(schema.load(item)))
            continue
        slug = item.get("slug") if isinstance(item, dict) and "slug" not in errors else None
        checked.append(BatchItem(None, errors, slug if isinstance(slug, str) else None))
    try:
        session = get_session()
        jobs = create_jobs_batch(session, current_principal(), checked, now=utcnow(),
                                 policy=services().settings.address_policy, box=services().settings.secret_box)
    except ValidationFailed as exc:
        raise ValidationFailed({"jobs": exc.errors} if wrapped else exc.errors, exc.message) from None
    session.commit()
    return json_response([JOB.render(job) for job in jobs], 201)


def _toggle(body: dict[str, Any], enabled: bool) -> Response:
    session = get_session()
    refs = body.get("ids") if "ids" in body else body.get("job_ids")
    updated, effects = set_jobs_enabled(session, current_principal(), refs or [], enabled, now=utcnow())
    commit_and_apply(session, effects, services().broker)
    return json_response({"updated": updated})


@blp.route("/jobs/batch-enable", methods=["POST"])
@requires_scope("jobs:write")
@blp.arguments(JobBatchToggleSchema())
@blp.response(200, schema_of(BATCH_TOGGLE_RESULT))
def batch_enable_view(body: dict[str, Any]) -> Response:
    """Enable jobs by id or slug; their held runs are enqueued again."""
    return _toggle(body, True)


@blp.route("/jobs/batch-disable", methods=["POST"])
@requires_scope("jobs:write")
@blp.arguments(JobBatchToggleSchema())
@blp.response(200, schema_of(BATCH_TOGGLE_RESULT))
def batch_disable_view(body: dict[str, Any]) -> Response:
    """Disable jobs by id or slug: cron stops, ready runs are held."""
    return _toggle(body, False)


@blp.route("/jobs/<jobref:job>", methods=["GET"])
@requires_scope("jobs:read")
@authenticated_with(find_key_and_job)
@blp.response(200, _JOB)
def get_job_view(job: str) -> Response:
    """Get a job by id or slug."""
    # The job is read with the API key, in one statement.
    found = prefetched_row()
    if found["id"] is None:
        raise NotFound("job not found")
    return json_response(JOB.render(found))


@blp.route("/jobs/<jobref:job>", methods=["PATCH"])
@requires_scope("jobs:write")
@blp.arguments(JobPatchSchema())
@blp.response(200, _JOB)
def patch_job_view(body: dict[str, Any], job: str) -> Response:
    """Change some of a job's fields; a change writes a new version, no change writes nothing."""
    if g.get("body") is None:  # a JSON `null` body reaches here as {}: the root must be an object
        raise ValidationFailed({"_schema": ["Invalid input type."]})
    session = get_session()
    updated, effects = patch_job(session, current_principal(), job, body, now=utcnow(),
                                 policy=services().settings.address_policy, box=services().settings.secret_box)
    commit_and_apply(session, effects, services().broker)
    return json_response(JOB.render(updated))


@blp.route("/jobs/<jobref:job>", methods=["DELETE"])
@requires_scope("jobs:write")
@blp.arguments(DeleteQuerySchema(), location="query", as_kwargs=True)
@blp.response(204)
def delete_job_view(job: str, force: bool = False) -> Response:
    """Delete a job and its runs; 409 while it has active runs, unless `?force=true`."""
    session = get_session()
    effects = delete_job(session, current_principal(), job, force=force, now=utcnow())
    commit_and_apply(session, effects, services().broker)
    return Response(status=204)


@blp.route("/jobs/<job>/clone", methods=["POST"])
@requires_scope("jobs:write")
@blp.arguments(JobCloneSchema())
@blp.response(201, _JOB)
def clone_job_view(body: dict[str, Any], job: str) -> Response:
    """Copy a job's configuration under a new name and slug."""
    session = get_session()
    created = clone_job(session, current_principal(), job, body, now=utcnow(),
                        policy=services().settings.address_policy, box=services().settings.secret_box)
    session.commit()
    return json_response(JOB.render(created), 201, {"Location": f"/v1/jobs/{created['id']}"})
