"""The jobs page (search, health, enabled state, next cron tick; enable and disable) and the new-job form."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Response, redirect, request, url_for

from api.console.blueprint import blp
from api.console.forms import body_of_form, load
from api.console.guard import console_page, current_visitor, safe_next
from api.console.rendering import page
from api.context import get_session, services
from api.job_page import CURSOR_KIND
from api.pagination import decode_time_cursor, encode_cursor
from api.schemas.jobs import JobCreateSchema
from shared.clock import utcnow
from shared.errors import SluiceError, ValidationFailed
from shared.jobs.enablement import set_jobs_enabled
from shared.jobs.health import jobs_health
from shared.jobs.lifecycle import create_job
from shared.jobs.resource import JOB
from shared.jobs.store import list_job_records
from shared.runs.commit import commit_and_apply
from shared.runs.retries import STRATEGIES
from shared.schedules.cron import CronError, next_fire_time, parse_cron

PAGE_SIZE = 50
HEALTH_WINDOW = "7d"
_ENABLED = {"true": True, "false": False}
_NEW_JOB_TEXT = ("name", "slug", "endpoint_url", "description", "cron", "timezone", "retry_strategy")
_NEW_JOB_INTEGERS = ("max_attempts", "timeout_secs", "max_concurrency")


def next_tick(job: dict[str, Any], now: datetime) -> datetime | None:
    """When the scheduler fires the job next (``None``: no cron, disabled, or a schedule that never fires)."""
    if not job["cron"] or not job["enabled"]:
        return None
    try:
        return next_fire_time(parse_cron(job["cron"]), job["timezone"], now)
    except (CronError, ValueError):
        return None


@blp.route("/jobs", methods=["GET"])
@console_page("jobs:read")
def jobs_page() -> Response:
    search = request.args.get("q", "").strip()
    enabled = _ENABLED.get(request.args.get("enabled", ""))
    session = get_session()
    project = current_visitor().principal.project_id
    records = list_job_records(session, project, limit=PAGE_SIZE + 1, search=search or None, enabled=enabled,
                               after=decode_time_cursor(CURSOR_KIND, request.args.get("cursor")))
    more = len(records) > PAGE_SIZE
    records = records[:PAGE_SIZE]
    cursor = encode_cursor(CURSOR_KIND, records[-1]["created_at"], records[-1]["id"]) if more else None
    now = utcnow()
    jobs = [JOB.render(record) for record in records]
    health = jobs_health(session, [job["id"] for job in jobs], HEALTH_WINDOW, now=now)
    ticks = {job["id"]: next_tick(job, now) for job in jobs}
    return page("jobs.html", jobs=jobs, health=health, ticks=ticks, search=search,
                enabled=request.args.get("enabled", ""), cursor=cursor, window=HEALTH_WINDOW)


def _toggle(ref: str, enabled: bool) -> Response:
    session = get_session()
    _updated, effects = set_jobs_enabled(session, current_visitor().principal, [ref], enabled, now=utcnow())
    commit_and_apply(session, effects, services().broker)
    return redirect(safe_next(request.form.get("next")), code=303)  # type: ignore[return-value]


@blp.route("/jobs/<ref>/enable", methods=["POST"])
@console_page("jobs:write")
def enable_job(ref: str) -> Response:
    return _toggle(ref, True)


@blp.route("/jobs/<ref>/disable", methods=["POST"])
@console_page("jobs:write")
def disable_job(ref: str) -> Response:
    return _toggle(ref, False)


@blp.route("/new-job", methods=["GET"])
@console_page("jobs:write")
def new_job_page() -> Response:
    return page("new_job.html", form={"timezone": "UTC"}, errors=None, strategies=STRATEGIES)


@blp.route("/new-job", methods=["POST"])
@console_page("jobs:write")
def create_job_action() -> Response:
    """Create a job from the form: the API's request schema, then the API's domain function."""
    session = get_session()
    try:
        body = load(JobCreateSchema(), body_of_form(request.form, text=_NEW_JOB_TEXT, integers=_NEW_JOB_INTEGERS,
                                                    json_fields=("payload_schema",)))
        job = create_job(session, current_visitor().principal, body, now=utcnow(),
                         policy=services().settings.address_policy, box=services().settings.secret_box)
    except SluiceError as exc:  # 422 fields, 400 rules, 409 slug: the form again, with the API's words
        return page("new_job.html", status=exc.status_code, form=request.form, message=exc.message,
                    strategies=STRATEGIES, errors=exc.errors if isinstance(exc, ValidationFailed) else None)
    session.commit()
    return redirect(url_for("console.job_page", ref=job["slug"]), code=303)  # type: ignore[return-value]
