"""W3C ``traceparent`` from the trigger to every call of its run, recorded on the run (both trigger
paths: the front layer and Flask's view), and a new trace per bulk, cron and replay run."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from pytest_httpserver import HTTPServer

from shared.db.models import Job, Run
from shared.runs.effects import Effects
from shared.triggers.cron import create_cron_runs
from tests.integration.jobs_support import create
from tests.integration.runner_harness import Harness

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _trace(header: str) -> tuple[str, str, str]:
    version, trace_id, parent_id, flags = header.split("-")
    assert version == "00" and len(parent_id) == 16
    return trace_id, parent_id, flags


def test_the_trigger_trace_reaches_every_attempt(client, auth, harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/t").respond_with_data("again", status=500)
    create(client, auth, "traced", endpoint_url=httpserver.url_for("/t"), retry_strategy="fixed", max_attempts=2)
    front = client.post("/v1/jobs/traced/trigger", json={}, headers={**auth, "traceparent": PARENT})
    flask = client.post("/v1/jobs/traced/trigger", json={},
                        headers={**auth, "traceparent": PARENT, "Idempotency-Key": "via-flask"})
    assert front.status_code == flask.status_code == 201
    for run in (front.json, flask.json):
        assert run["traceparent"] == PARENT
        assert client.get(f"/v1/runs/{run['id']}", headers=auth).json["traceparent"] == PARENT
    run_id = front.json["id"]
    harness.handle(run_id)
    harness.promote(run_id)
    harness.handle(run_id)
    sent = [request.headers["traceparent"] for request, _ in httpserver.log]
    assert len(sent) == 2
    parents = {_trace(header)[1] for header in sent}
    assert {_trace(header)[0] for header in sent} == {TRACE_ID} and {_trace(h)[2] for h in sent} == {"01"}
    assert len(parents) == 2 and "00f067aa0ba902b7" not in parents  # each attempt its own parent id


def test_without_a_valid_header_each_run_starts_a_new_trace(client, auth) -> None:
    create(client, auth, "untraced")
    plain = client.post("/v1/jobs/untraced/trigger", json={}, headers=auth).json["traceparent"]
    bad = client.post("/v1/jobs/untraced/trigger", json={},
                      headers={**auth, "traceparent": PARENT.upper()}).json["traceparent"]
    assert _trace(plain)[0] != _trace(bad)[0] and TRACE_ID.upper() not in bad and _trace(plain)[2] == "01"
    dry = client.post("/v1/jobs/untraced/trigger", json={"dry_run": True}, headers={**auth, "traceparent": PARENT})
    assert dry.json["traceparent"] == PARENT


def test_bulk_and_replay_runs_get_their_own_traces(client, auth, session) -> None:
    create(client, auth, "bulk")
    bulk = client.post("/v1/jobs/bulk/trigger/bulk", json={"items": [{}, {}, {}]},
                       headers={**auth, "traceparent": PARENT})
    assert bulk.status_code == 201
    traces = {_trace(run.traceparent)[0] for run in session.scalars(sa.select(Run))}
    assert len(traces) == 3 and TRACE_ID not in traces
    original = session.scalars(sa.select(Run)).first()
    session.execute(sa.update(Run).where(Run.id == original.id).values(status="canceled",
                                                                       finished_at=datetime.now(UTC)))
    session.commit()
    replayed = client.post(f"/v1/runs/{original.id}/replay", headers={**auth, "traceparent": PARENT})
    assert replayed.status_code == 201 and replayed.json["traceparent"] == PARENT


def test_cron_runs_get_a_new_trace_each(client, auth, session) -> None:
    job = session.get(Job, create(client, auth, "cron-traced", cron="* * * * *")["id"])
    for minute in (1, 2):
        tick = datetime(2026, 1, 1, 0, minute, tzinfo=UTC)
        create_cron_runs(session, [job], tick, tick, Effects())
    session.commit()
    traces = [run.traceparent for run in session.scalars(sa.select(Run).where(Run.triggered_by == "cron"))]
    assert len(traces) == 2 and len({_trace(t)[0] for t in traces}) == 2
