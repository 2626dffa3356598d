"""The runs page: the API's filters (status, job, trigger source, tag, time range) and keyset paging."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from api.console.blueprint import blp
from api.console.guard import console_page, current_visitor
from api.console.rendering import page
from api.context import get_session
from api.pagination import PAGE_MAX_BYTES, decode_time_cursor, encode_cursor
from shared.errors import ValidationFailed
from shared.runs.queries import TRIGGERS, list_runs, parse_filters
from shared.runs.status import RunStatus

PAGE_SIZE = 50
FILTERS = ("job_id", "triggered_by", "tag_key", "tag_value", "created_after", "created_before", "batch_id")


def filter_args() -> dict[str, str]:
    """The page's filters as the API's query arguments: blank fields left out, the status boxes joined."""
    args = {name: value.strip() for name in FILTERS if (value := request.args.get(name, "")).strip()}
    statuses = [s for s in request.args.getlist("status") if s]
    if statuses:
        args["status"] = ",".join(statuses)
    return args


def page_of_runs(kind: str, *, dlq: bool) -> dict[str, Any]:
    """One page of the project's runs (or dead letters) as the API lists them, or the filters' 422."""
    session = get_session()
    project = current_visitor().principal.project_id
    args = filter_args()
    try:
        filters = parse_filters(session, project, args, dlq=dlq)
    except ValidationFailed as exc:
        return {"runs": [], "cursor": None, "errors": exc.errors, "args": args}
    runs, position = list_runs(session, filters, limit=PAGE_SIZE, max_bytes=PAGE_MAX_BYTES,
                               after=decode_time_cursor(kind, request.args.get("cursor")))
    return {"runs": runs, "cursor": encode_cursor(kind, *position) if position else None, "errors": None,
            "args": args}


@blp.route("/runs", methods=["GET"])
@console_page("runs:read")
def runs_page() -> Response:
    listing = page_of_runs("console-runs", dlq=False)
    return page("runs.html", status=422 if listing["errors"] else 200, **listing,
                statuses=[s.value for s in RunStatus], triggers=TRIGGERS,
                chosen=set(request.args.getlist("status")), dlq=False,
                live=any(run.finished_at is None for run in listing["runs"]))


