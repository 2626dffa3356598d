"""The common trigger is answered in front of Flask exactly as Flask answers it, and every other trigger
request is Flask's. Each request is sent to the app and to Flask alone; the answers must match (apart from
the new run's id and timestamps)."""

from __future__ import annotations

import io
from typing import Any

import pytest
import sqlalchemy as sa

from api.errors import UNAVAILABLE_MESSAGE
from shared.db.engine import transaction
from shared.db.models import Job, Run
from tests.conftest import make_key
from tests.integration.front_support import both, flask_paths

VOLATILE = {"id", "created_at", "queued_at", "expires_at", "request_id", "updated_at", "scheduled_at"}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
JOB = {"name": "Front", "slug": "front", "endpoint_url": "http://127.0.0.1:9/e"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _normal(response: Any) -> tuple[int, Any, dict[str, str]]:
    body = response.get_json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
        if "traceparent" in body and body["traceparent"] != TRACEPARENT:
            body["traceparent"] = "a new trace"  # random: only the request's own trace is predictable
    headers = {k: v for k, v in response.headers.items() if k in ("Content-Type", "X-Request-Id")}
    if headers.get("X-Request-Id") != "req-1":  # generated per request
        headers["X-Request-Id"] = "generated" if headers.get("X-Request-Id") else "missing"
    if "Location" in response.headers:
        headers["Location"] = "/v1/runs/" if response.headers["Location"].startswith("/v1/runs/") else "?"
    return response.status_code, body, headers


def test_the_common_trigger_is_served_in_front_like_flask(app, client, auth, session_factory, monkeypatch) -> None:
    client.post("/v1/jobs", json={**JOB, "tags": {"team": "a"}, "default_run_metadata": {"m": "1"}}, headers=auth)
    through_flask = flask_paths(app, monkeypatch)
    bodies = [None, {}, {"payload": {"n": 1}}, {"payload": [1, "é", None], "tags": {"t": "x"}},
              {"payload": {"n": 2}, "metadata": {"k": "v"}, "priority": 7, "ttl_secs": 60, "delay_secs": 0,
               "concurrency_key": "c", "max_attempts_override": 2, "timeout_secs_override": 5,
               "debug_mode": True},
              {"payload": {"n": 3}, "colour": "red"},  # unknown fields are ignored (§1.1)
              {"payload": {"s": "a\\u0000"}}]  # an escaped backslash, not a NUL
    for body in bodies:
        kwargs: dict[str, Any] = {"headers": {**auth, "X-Request-Id": "req-1", "traceparent": TRACEPARENT}}
        if body is not None:
            kwargs["json"] = body
        front, flask = both(app, "POST", "/v1/jobs/front/trigger", **kwargs)
        assert _normal(front) == _normal(flask), body
        assert front.status_code == 201 and front.headers["X-Request-Id"] == "req-1"
        assert front.get_json()["traceparent"] == TRACEPARENT
        assert front.headers["Content-Length"] == str(len(front.get_data()))
    assert through_flask == []  # the app's requests were all answered in front
    with session_factory() as s:
        runs = s.scalars(sa.select(Run).order_by(Run.created_at)).all()
        assert len(runs) == 2 * len(bodies)
        assert runs[0].run_metadata == runs[1].run_metadata == {"m": "1"}  # job defaults merged on both paths


@pytest.mark.parametrize("case", [
    "bad-json", "wrong-type", "nul", "priority-range", "idempotency-header", "dry-run",
    "unknown-job", "bad-key", "no-key", "scope", "query", "trailing-slash", "schema", "disabled", "dedup",
    "array-body", "null-body", "non-ascii-ref",
])
def test_everything_else_is_answered_by_flask(app, auth, session_factory, monkeypatch, case) -> None:
    client = app.test_client()
    job = {**JOB, "payload_schema": SCHEMA}
    if case == "dedup":
        job["dedup_window_secs"] = 60
    client.post("/v1/jobs", json=job, headers=auth)
    if case == "disabled":
        with transaction(session_factory) as s:
            s.execute(sa.update(Job).values(enabled=False))
    path, headers, kwargs = "/v1/jobs/front/trigger", dict(auth), {"json": {"payload": {"n": 1}}}
    if case == "bad-json":
        kwargs = {"data": b'{"payload":', "content_type": "application/json"}
    elif case == "wrong-type":
        kwargs = {"data": b'{"payload": {"n": 1}}', "content_type": "text/plain"}
    elif case == "nul":
        kwargs = {"data": b'{"payload": {"n": 1, "s": "a\\u0000"}}', "content_type": "application/json"}
    elif case == "priority-range":
        kwargs = {"json": {"payload": {"n": 1}, "priority": 11}}
    elif case == "idempotency-header":
        headers["Idempotency-Key"] = "k-1"
    elif case == "dry-run":
        kwargs = {"json": {"payload": {"n": 1}, "dry_run": True}}
    elif case == "unknown-job":
        path = "/v1/jobs/nope/trigger"
    elif case == "non-ascii-ref":
        path = "/v1/jobs/frönt/trigger"
    elif case == "bad-key":
        headers = {"Authorization": "Bearer sk_not_a_key"}
    elif case == "no-key":
        headers = {}
    elif case == "scope":
        headers = {"Authorization": f"Bearer {make_key(session_factory, scopes='jobs:read')}"}
    elif case == "query":
        path += "?x=1"
    elif case == "trailing-slash":
        path += "/"
    elif case == "schema":
        kwargs = {"json": {"payload": {"n": "one"}}}
    elif case == "array-body":
        kwargs = {"json": [1, 2]}
    elif case == "null-body":
        kwargs = {"data": b"null", "content_type": "application/json"}
    through_flask = flask_paths(app, monkeypatch)
    front, flask = both(app, "POST", path, headers=headers, **kwargs)
    assert through_flask == [path.split("?")[0]]  # the app handed it to Flask
    if case in ("idempotency-header", "dedup"):  # the second request found the first request's run
        assert (front.status_code, flask.status_code) == (201, 200)
        return
    assert _normal(front) == _normal(flask)
    expected = (200,) if case == "dry-run" else (201,) if case == "query" else (400, 401, 403, 404, 409, 415, 422)
    assert front.status_code in expected


def test_a_chunked_body_is_read_by_flask(app, client, auth, monkeypatch) -> None:
    """No Content-Length: the front layer cannot know the body is empty, so Flask reads the stream."""
    client.post("/v1/jobs", json=JOB, headers=auth)
    through_flask = flask_paths(app, monkeypatch)
    response = client.post("/v1/jobs/front/trigger", input_stream=io.BytesIO(b'{"payload": {"n": 42}}'),
                           environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
                           headers={**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["payload"] == {"n": 42}
    assert through_flask == ["/v1/jobs/front/trigger"]


def test_triggers_in_front_count_in_metrics_and_write_one_run_each(app, client, auth, session_factory,
                                                                    monkeypatch) -> None:
    client.post("/v1/jobs", json=JOB, headers=auth)
    through_flask = flask_paths(app, monkeypatch)
    for n in range(5):
        assert client.post("/v1/jobs/front/trigger", json={"payload": {"n": n}}, headers=auth).status_code == 201
    assert through_flask == []
    text = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("sluice_http_requests_total{")
                and 'route="/v1/jobs/<job>/trigger"' in x and 'status="201"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 5
    with session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Run)) == 5


@pytest.mark.parametrize("failure, status", [("RAISE EXCEPTION 'refused'", 500),
                                             ("PERFORM pg_terminate_backend(pg_backend_pid())", 503)])
def test_a_failed_insert_is_answered_in_front_and_never_run_again(app, client, auth, session_factory, monkeypatch,
                                                                  failure, status) -> None:
    """Once the trigger writes, a failure is the front layer's to answer (the INSERT may have happened, so
    Flask must not run the request again): in the one error shape, 500, or 503 for a lost connection."""
    client.post("/v1/jobs", json=JOB, headers=auth)
    ddl = [f"CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {failure}; RETURN NEW; END $$",
           "CREATE TRIGGER fail_insert BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION fail_insert()"]
    with transaction(session_factory) as s:
        for statement in ddl:
            s.execute(sa.text(statement))
    try:
        through_flask = flask_paths(app, monkeypatch)
        response = client.post("/v1/jobs/front/trigger", json={"payload": {"n": 1}},
                               headers={**auth, "X-Request-Id": "req-1"})
    finally:
        with transaction(session_factory) as s:
            s.execute(sa.text("DROP TRIGGER fail_insert ON runs"))
            s.execute(sa.text("DROP FUNCTION fail_insert()"))
    assert through_flask == []
    assert response.status_code == status
    unavailable = status == 503
    assert response.get_json() == {
        "code": status, "status": "Service Unavailable" if unavailable else "Internal Server Error",
        "message": UNAVAILABLE_MESSAGE if unavailable else "Internal server error", "request_id": "req-1"}
    assert response.headers["X-Request-Id"] == "req-1"
    with session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Run)) == 0
    assert client.post("/v1/jobs/front/trigger", json={"payload": {"n": 2}}, headers=auth).status_code == 201
