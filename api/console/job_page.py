"""A job's page (configuration, versions with a diff between two, dependencies, recent runs, health) and
its trigger form (a payload editor checked against the job's payload schema)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import Response, redirect, request, url_for

from api.console.blueprint import blp
from api.console.forms import body_of_form, load
from api.console.guard import console_page, current_visitor
from api.console.jobs import next_tick
from api.console.rendering import page
from api.context import get_session, services
from api.pagination import PAGE_MAX_BYTES
from api.schemas.triggers import TriggerSchema
from shared.clock import utcnow
from shared.db.models import Run
from shared.dependencies.edges import list_edges
from shared.errors import NotFound, SluiceError, ValidationFailed
from shared.jobs.health import WINDOWS, job_health, parse_window
from shared.jobs.lifecycle import require_job
from shared.jobs.lookup import get_job
from shared.jobs.resource import CONFIG_FIELDS, JOB, render_version
from shared.jobs.store import JOBS
from shared.jobs.versions import find_version, list_versions
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.queries import RunFilters, list_runs
from shared.triggers.manual import trigger_run

RECENT_RUNS = 20
VERSIONS_SHOWN = 50
_TRIGGER_TEXT = ("idempotency_key", "concurrency_key")
_TRIGGER_INTEGERS = ("priority", "delay_secs")


def _names(session: Any, project_id: str, job_ids: list[str]) -> dict[str, Any]:
    if not job_ids:
        return {}
    rows = session.execute(sa.select(JOBS.c.id, JOBS.c.slug, JOBS.c.name)
                           .where(JOBS.c.project_id == project_id, JOBS.c.id.in_(job_ids)))
    return {row.id: row for row in rows}


def _diff(session: Any, job_id: str) -> dict[str, Any] | None:
    """The two versions named by ``?a=`` and ``?b=``, field by field (the configuration's fields)."""
    a_id, b_id = request.args.get("a"), request.args.get("b")
    if not a_id or not b_id:
        return None
    older, newer = (find_version(session, job_id, v) for v in (a_id, b_id))
    if older is None or newer is None:
        raise NotFound("version not found")
    a, b = render_version(older), render_version(newer)
    rows = [{"name": f.name, "a": a[f.name], "b": b[f.name], "changed": a[f.name] != b[f.name]}
            for f in CONFIG_FIELDS]
    return {"a": a, "b": b, "rows": rows, "changed": sum(row["changed"] for row in rows)}


@blp.route("/jobs/<ref>", methods=["GET"])
@console_page("jobs:read")
def job_page(ref: str) -> Response:
    session = get_session()
    visitor = current_visitor()
    project = visitor.principal.project_id
    job = JOB.render(require_job(session, visitor.principal, ref))
    window = parse_window(request.args.get("window"))
    now = utcnow()
    versions = [render_version(v) for v in list_versions(session, job["id"], limit=VERSIONS_SHOWN)]
    edges = list_edges(session, job["id"], limit=100)
    upstream = _names(session, project, [edge["depends_on_job_id"] for edge in edges])
    runs: list[Run] = []
    if visitor.can("runs:read"):
        runs, _ = list_runs(session, RunFilters(project_id=project, job_id=job["id"]), limit=RECENT_RUNS,
                            max_bytes=PAGE_MAX_BYTES)
    return page("job.html", job=job, fields=JOB.fields, versions=versions, edges=edges, upstream=upstream,
                runs=runs, health=job_health(session, job["id"], window, now=now), window=window,
                windows=list(WINDOWS), tick=next_tick(job, now), diff=_diff(session, job["id"]),
                live=any(run.finished_at is None for run in runs))


def _trigger_form(job: dict[str, Any], *, status: int = 200, form: Any = None, message: str | None = None,
                  errors: Any = None, preview: Any = None) -> Response:
    return page("trigger.html", status=status, job=job, form=form or {"payload": "{}"},
                message=message, errors=errors, preview=preview)


@blp.route("/jobs/<ref>/trigger", methods=["GET"])
@console_page("jobs:trigger")
def trigger_page(ref: str) -> Response:
    return _trigger_form(JOB.render(require_job(get_session(), current_visitor().principal, ref)))


@blp.route("/jobs/<ref>/trigger", methods=["POST"])
@console_page("jobs:trigger")
def trigger_action(ref: str) -> Response:
    """Check (a dry run) or trigger, through the API's trigger schema and pipeline."""
    session = get_session()
    principal = current_visitor().principal
    shown = JOB.render(require_job(session, principal, ref))
    job = get_job(session, principal.project_id, shown["id"])
    check_only = request.form.get("action") == "check"
    try:
        body = body_of_form(request.form, text=_TRIGGER_TEXT, integers=_TRIGGER_INTEGERS, json_fields=("payload",))
        body = load(TriggerSchema(), {**body, "dry_run": check_only})
        effects = Effects()
        outcome = trigger_run(session, job, body, actor=principal.actor, now=utcnow(), effects=effects)
    except SluiceError as exc:  # 422 payload or fields, 409 disabled: the form again, with the API's words
        session.rollback()
        return _trigger_form(shown, status=exc.status_code, form=request.form, message=exc.message,
                             errors=exc.errors if isinstance(exc, ValidationFailed) else None)
    if check_only:
        session.rollback()
        return _trigger_form(shown, form=request.form, preview=outcome.run)
    commit_and_apply(session, effects, services().broker)
    return redirect(url_for("console.run_page", run_id=outcome.run.id), code=303)  # type: ignore[return-value]
