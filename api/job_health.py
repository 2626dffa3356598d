"""Job health endpoint (CONTRACT §8)."""

from __future__ import annotations

from flask import Response, request
from flask_smorest import Blueprint

from api.auth import current_principal, requires_scope
from api.context import get_session
from api.pagination import json_response
from api.schemas.resources import schema_of
from shared.clock import utcnow
from shared.jobs.health import job_health, parse_window
from shared.jobs.lifecycle import require_job
from shared.jobs.resource import JOB_HEALTH

blp = Blueprint("job_health", __name__, url_prefix="/v1", description="Job health")


@blp.route("/jobs/<job>/health", methods=["GET"])
@requires_scope("jobs:read")
@blp.doc(parameters=[{"in": "query", "name": "window", "required": False,
                      "schema": {"type": "string", "enum": ["1h", "1d", "7d", "30d"], "default": "7d"}}])
@blp.response(200, schema_of(JOB_HEALTH))
def job_health_view(job: str) -> Response:
    """Success rate, durations and a 0–100 score over the window's terminal runs (−1 without runs)."""
    session = get_session()
    found = require_job(session, current_principal(), job)
    window = parse_window(request.args.get("window"))  # after the lookup: 404 precedes 400 (§1.5)
    return json_response(JOB_HEALTH.render(job_health(session, found["id"], window, now=utcnow())))
