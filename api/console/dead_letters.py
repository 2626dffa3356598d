"""Dead letters: runs that ended in failure, with the API's filters; replay one or many, and cancel a replay
that has not finished."""

from __future__ import annotations

from flask import Response, request

from api.console.blueprint import blp
from api.console.guard import console_page, current_visitor
from api.console.rendering import page
from api.console.runs import page_of_runs
from api.context import get_session, services
from shared.clock import utcnow
from shared.errors import ValidationFailed
from shared.runs.actions import CancelResult, bulk_cancel, bulk_replay
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.overview import replays_of
from shared.runs.queries import DLQ_STATUSES, TRIGGERS

MAX_SELECTED = 100  # the API's bulk limit


@blp.route("/dead-letters", methods=["GET"])
@console_page("runs:read")
def dead_letters_page() -> Response:
    listing = page_of_runs("console-dlq", dlq=True)
    replays = replays_of(get_session(), current_visitor().principal.project_id, [r.id for r in listing["runs"]])
    return page("dead_letters.html", status=422 if listing["errors"] else 200, **listing, replays=replays,
                statuses=DLQ_STATUSES, triggers=TRIGGERS, chosen=set(request.args.getlist("status")), dlq=True,
                live=any(run.finished_at is None for run in replays.values()))


def _selected() -> list[str]:
    ids = [value for value in request.form.getlist("run_ids") if value]
    if not 1 <= len(ids) <= MAX_SELECTED:
        raise ValidationFailed({"run_ids": [f"Select 1 to {MAX_SELECTED} runs."]})
    return ids


@blp.route("/dead-letters/replay", methods=["POST"])
@console_page("runs:write")
def replay_dead_letters() -> Response:
    """Replay the selected runs, each independently (the API's bulk replay)."""
    session = get_session()
    principal = current_visitor().principal
    effects = Effects()
    results = bulk_replay(session, principal.project_id, _selected(), actor=principal.actor, now=utcnow(),
                          effects=effects)
    commit_and_apply(session, effects, services().broker)
    return page("bulk_result.html", action="Replay", results=results,
                done=sum(1 for r in results if r["status"] == "replayed"))


@blp.route("/dead-letters/cancel", methods=["POST"])
@console_page("runs:write")
def cancel_replays() -> Response:
    """Cancel the newest replay of each selected dead letter, where it has not finished (the API's bulk
    cancel over those replays)."""
    session = get_session()
    project = current_visitor().principal.project_id
    replays = replays_of(session, project, _selected())
    if not replays:
        raise ValidationFailed({"run_ids": ["None of the selected runs has been replayed."]})
    effects, result = Effects(), CancelResult()
    results = bulk_cancel(session, project, [run.id for run in replays.values()], now=utcnow(), effects=effects,
                          result=result)
    commit_and_apply(session, effects, services().broker)
    return page("bulk_result.html", action="Cancel replays", results=[
        {"original_run_id": original, "new_run_id": r["id"], "status": r["status"], "error": r["error"]}
        for original, r in zip(replays, results, strict=True)], done=sum(1 for r in results if r["error"] is None))
