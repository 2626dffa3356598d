"""A run's page (payload, result, error, event timeline, execution trace as a waterfall) with cancel and
replay."""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, url_for

from api.console.blueprint import blp
from api.console.guard import console_page, current_visitor
from api.console.rendering import page
from api.console.trace import waterfall
from api.context import get_session, services
from shared.clock import utcnow
from shared.db.models import Run
from shared.errors import NotFound
from shared.jobs.store import find_job_record
from shared.runs.actions import CancelResult, cancel_run, replay_run
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.queries import get_project_run, list_events
from shared.runs.resource import RUN, RUN_EVENT

EVENTS_SHOWN = 200


def _run(run_id: str) -> Run:
    run = get_project_run(get_session(), current_visitor().principal.project_id, run_id)
    if run is None:
        raise NotFound("run not found")
    return run


@blp.route("/runs/<run_id>", methods=["GET"])
@console_page("runs:read")
def run_page(run_id: str) -> Response:
    session = get_session()
    run = _run(run_id)
    job = find_job_record(session, run.project_id, run.job_id)
    events, more = list_events(session, run.id, limit=EVENTS_SHOWN)
    rendered: dict[str, Any] = RUN.render(run)
    return page("run.html", run=rendered, job=job, events=[RUN_EVENT.render(e) for e in events],
                more_events=more is not None, trace=waterfall(rendered["execution_trace"]),
                live=run.finished_at is None)


@blp.route("/runs/<run_id>/cancel", methods=["POST"])
@console_page("runs:write")
def cancel_action(run_id: str) -> Response:
    session = get_session()
    effects, result = Effects(), CancelResult()
    run = cancel_run(session, current_visitor().principal.project_id, run_id, now=utcnow(), effects=effects,
                     result=result)
    commit_and_apply(session, effects, services().broker)
    return redirect(url_for("console.run_page", run_id=run.id), code=303)  # type: ignore[return-value]


@blp.route("/runs/<run_id>/replay", methods=["POST"])
@console_page("runs:write")
def replay_action(run_id: str) -> Response:
    session = get_session()
    principal = current_visitor().principal
    effects = Effects()
    run = replay_run(session, principal.project_id, run_id, actor=principal.actor, now=utcnow(), effects=effects)
    commit_and_apply(session, effects, services().broker)
    return redirect(url_for("console.run_page", run_id=run.id), code=303)  # type: ignore[return-value]
