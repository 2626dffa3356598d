"""Jobs endpoints (CONTRACT §3). Placeholder blueprint replaced by the jobs implementation."""

from __future__ import annotations

from flask_smorest import Blueprint

from api.auth import current_principal, requires_scope
from api.context import get_session
from api.pagination import json_response
from shared.job_lookup import get_job

blp = Blueprint("jobs", __name__, url_prefix="/v1")


@blp.route("/jobs/<job>", methods=["GET"])
@requires_scope("jobs:read")
def get_one(job: str):  # type: ignore[no-untyped-def]
    found = get_job(get_session(), current_principal().project_id, job)
    return json_response({"id": found.id})
