"""Runs API (CONTRACT §7): list, DLQ, get, events, cancel, bulk cancel, replay, bulk replay.

Views are thin: filters and keyset paging live in ``shared.runs.queries``, cancel and replay in
``shared.runs.actions``. Literal paths (``dlq``, ``bulk-cancel``, ``bulk-replay``) are never run ids: the
``run_id`` converter refuses them, so e.g. ``DELETE /v1/runs/dlq`` is a 405, not a run lookup.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Response, request
from flask.blueprints import BlueprintSetupState
from flask_smorest import Blueprint
from werkzeug.routing import BaseConverter

from api.auth import check_project, current_principal, requires_scope
from api.context import get_session, services
from api.gate import optional_body
from api.pagination import (
    PAGE_MAX_BYTES,
    clamp_limit,
    decode_time_cursor,
    encode_cursor,
    json_response,
    paged_response,
)
from api.resources import BULK_CANCEL_RESULT, BULK_REPLAY_RESULT
from api.schemas.resources import schema_of
from api.schemas.runs import PageQuerySchema, RunFilterQuerySchema, RunIdsSchema, RunListQuerySchema
from shared import json_codec
from shared.clock import utcnow
from shared.errors import NotFound
from shared.jobs.lookup import get_job
from shared.runs.actions import CancelResult, bulk_cancel, bulk_replay, cancel_run, replay_run
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.queries import get_project_run, list_events, list_runs, parse_filters
from shared.runs.resource import RUN, RUN_EVENT
from shared.runs.trace_context import accepted_traceparent

blp = Blueprint("runs", __name__, url_prefix="/v1", description="Runs: list, inspect, cancel, replay")
_RUN = schema_of(RUN)


class RunIdConverter(BaseConverter):
    """A path segment that is not one of the literal ``/v1/runs/…`` routes."""

    regex = r"(?!(?:dlq|bulk-cancel|bulk-replay)$)[^/]+"


def _add_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters.setdefault("run_id", RunIdConverter)


blp.record_once(_add_converter)  # before any route below is added


def _page_of_runs(query: dict[str, Any], kind: str, *, job_ref: str | None = None, dlq: bool = False) -> Response:
    """One page of runs. Order of checks (§1.5): filters 422 → ``project_id`` 403 → job 404 → cursor 400."""
    session = get_session()
    principal = current_principal()
    filters = parse_filters(session, principal.project_id, request.args, dlq=dlq,
                            job_id="" if job_ref is not None else None)
    check_project(request.args.get("project_id"))
    if job_ref is not None:
        job_id = get_job(session, principal.project_id, job_ref).id
        filters, kind = replace(filters, job_id=job_id), f"{kind}:{job_id}"
    limit = clamp_limit(query.get("limit"))
    after = decode_time_cursor(kind, request.args.get("cursor"))
    runs, position = list_runs(session, filters, limit=limit, after=after, max_bytes=PAGE_MAX_BYTES)
    cursor = encode_cursor(kind, *position) if position else None
    return paged_response(json_codec.dumps([RUN.render(r) for r in runs]), cursor, limit)


@blp.route("/runs", methods=["GET"])
@requires_scope("runs:read")
@blp.arguments(RunListQuerySchema(), location="query")
@blp.response(200, _RUN(many=True))
def list_runs_view(query: dict[str, Any]) -> Response:
    """List the project's runs, newest first; the filters combine."""
    return _page_of_runs(query, "runs")


@blp.route("/runs/dlq", methods=["GET"])
@requires_scope("runs:read")
@blp.arguments(RunListQuerySchema(), location="query")
@blp.response(200, _RUN(many=True))
def list_dlq_view(query: dict[str, Any]) -> Response:
    """List the runs that ended in failure (the dead-letter queue), newest first."""
    return _page_of_runs(query, "dlq", dlq=True)


@blp.route("/jobs/<job>/runs", methods=["GET"])
@requires_scope("runs:read")
@blp.arguments(RunFilterQuerySchema(), location="query")
@blp.response(200, _RUN(many=True))
def list_job_runs_view(query: dict[str, Any], job: str) -> Response:
    """List the job's runs, newest first; the filters combine."""
    return _page_of_runs(query, "job-runs", job_ref=job)


def _run_or_404(run_id: str) -> Any:
    run = get_project_run(get_session(), current_principal().project_id, run_id)
    if run is None:
        raise NotFound("run not found")
    return run


@blp.route("/runs/<run_id:run_id>", methods=["GET"])
@requires_scope("runs:read")
@blp.response(200, _RUN)
def get_run_view(run_id: str) -> Response:
    """Get a run."""
    return json_response(RUN.render(_run_or_404(run_id)))


@blp.route("/runs/<run_id:run_id>/events", methods=["GET"])
@requires_scope("runs:read")
@blp.arguments(PageQuerySchema(), location="query")
@blp.response(200, schema_of(RUN_EVENT)(many=True))
def list_events_view(query: dict[str, Any], run_id: str) -> Response:
    """The run's events, newest first."""
    run = _run_or_404(run_id)
    limit = clamp_limit(query.get("limit"))
    kind = f"events:{run.id}"
    events, position = list_events(get_session(), run.id, limit=limit,
                                   after=decode_time_cursor(kind, request.args.get("cursor")))
    cursor = encode_cursor(kind, *position) if position else None
    return paged_response(json_codec.dumps([RUN_EVENT.render(e) for e in events]), cursor, limit)


def _cancel(run_id: str) -> Response:
    session = get_session()
    effects, result = Effects(), CancelResult()
    run = cancel_run(session, current_principal().project_id, run_id, now=utcnow(), effects=effects,
                     result=result)
    commit_and_apply(session, effects, services().broker)
    return json_response(RUN.render(run))


@blp.route("/runs/<run_id:run_id>/cancel", methods=["POST"])
@optional_body
@requires_scope("runs:write")
@blp.response(200, _RUN)
def cancel_run_view(run_id: str) -> Response:
    """Cancel a run that has not finished; 409 when it has."""
    return _cancel(run_id)


@blp.route("/runs/<run_id:run_id>", methods=["DELETE"])
@requires_scope("runs:write")
@blp.response(200, _RUN)
def delete_run_view(run_id: str) -> Response:
    """Cancel a run that has not finished (the same as `POST /v1/runs/{run_id}/cancel`)."""
    return _cancel(run_id)


@blp.route("/runs/bulk-cancel", methods=["POST"])
@requires_scope("runs:write")
@blp.arguments(RunIdsSchema())
@blp.response(200, schema_of(BULK_CANCEL_RESULT))
def bulk_cancel_view(body: dict[str, Any]) -> Response:
    """Cancel up to 100 runs; one result per id, in order."""
    session = get_session()
    effects, result = Effects(), CancelResult()
    results = bulk_cancel(session, current_principal().project_id, body["run_ids"], now=utcnow(),
                          effects=effects, result=result)
    commit_and_apply(session, effects, services().broker)
    canceled = sum(1 for r in results if r["error"] is None)
    return json_response({"results": results, "total": len(results), "canceled": canceled,
                          "failed": len(results) - canceled})


@blp.route("/runs/<run_id:run_id>/replay", methods=["POST"])
@optional_body
@requires_scope("runs:write")
@blp.response(201, _RUN)
def replay_run_view(run_id: str) -> Response:
    """Run a finished run again, as a new run with the same payload."""
    session = get_session()
    principal = current_principal()
    effects = Effects()
    run = replay_run(session, principal.project_id, run_id, actor=principal.actor, now=utcnow(), effects=effects,
                     traceparent=accepted_traceparent(request.headers.get("traceparent")))
    commit_and_apply(session, effects, services().broker)
    return json_response(RUN.render(run), 201, {"Location": f"/v1/runs/{run.id}"})


@blp.route("/runs/bulk-replay", methods=["POST"])
@requires_scope("runs:write")
@blp.arguments(RunIdsSchema())
@blp.response(200, schema_of(BULK_REPLAY_RESULT))
def bulk_replay_view(body: dict[str, Any]) -> Response:
    """Replay up to 100 finished runs; one result per id, in order."""
    session = get_session()
    principal = current_principal()
    effects = Effects()
    results = bulk_replay(session, principal.project_id, body["run_ids"], actor=principal.actor, now=utcnow(),
                          effects=effects)
    commit_and_apply(session, effects, services().broker)
    replayed = sum(1 for r in results if r["status"] == "replayed")
    return json_response({"results": results, "total": len(results), "replayed": replayed})
