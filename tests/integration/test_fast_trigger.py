"""``api.fast_trigger``: the lean trigger path answers exactly as the Flask path does, and hands every
unusual request to Flask. Each request is sent twice, to the app with and without the lean path; the
answers must match (apart from the new run's id and timestamps)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

import api.fast_trigger
from api.fast_trigger import FastTrigger
from shared.db.engine import transaction
from shared.db.models import Job, Run
from tests.conftest import make_key

VOLATILE = {"id", "created_at", "queued_at", "expires_at", "request_id", "updated_at", "scheduled_at"}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _normal(response: Any) -> tuple[int, Any, dict[str, str]]:
    body = response.get_json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    headers = {k: v for k, v in response.headers.items() if k in ("Content-Type", "X-Request-Id")}
    if headers.get("X-Request-Id") != "req-1":  # generated per request
        headers["X-Request-Id"] = "generated" if headers.get("X-Request-Id") else "missing"
    if "Location" in response.headers:
        headers["Location"] = "/v1/runs/" if response.headers["Location"].startswith("/v1/runs/") else "?"
    return response.status_code, body, headers


@pytest.fixture(name="served")
def served_fixture(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Statuses the lean path answered itself (it logs through ``api.fast_trigger.log_request``)."""
    statuses: list[int] = []
    real = api.fast_trigger.log_request

    def spy(*args: Any) -> None:
        statuses.append(args[3])
        real(*args)

    monkeypatch.setattr(api.fast_trigger, "log_request", spy)
    return statuses


def _both(app: Flask, method: str, path: str, **kwargs: Any) -> tuple[Any, Any]:
    lean = app.wsgi_app
    assert isinstance(lean, FastTrigger) and lean.enabled
    fast = getattr(app.test_client(), method)(path, **kwargs)
    lean.enabled = False
    try:
        slow = getattr(app.test_client(), method)(path, **kwargs)
    finally:
        lean.enabled = True
    return fast, slow


def test_the_common_trigger_is_served_by_the_lean_path_like_flask(app, client, auth, session_factory,
                                                                  served) -> None:
    client.post("/v1/jobs", json={"name": "Lean", "slug": "lean", "endpoint_url": "http://127.0.0.1:9/e",
                                  "tags": {"team": "a"}, "default_run_metadata": {"m": "1"}}, headers=auth)
    bodies = [None, {}, {"payload": {"n": 1}}, {"payload": [1, "é", None], "tags": {"t": "x"}},
              {"payload": {"n": 2}, "metadata": {"k": "v"}, "priority": 7, "ttl_secs": 60, "delay_secs": 0,
               "concurrency_key": "c", "max_attempts_override": 2, "timeout_secs_override": 5,
               "debug_mode": True},
              {"payload": {"n": 3}, "colour": "red"}]  # unknown fields are ignored (§1.1)
    for body in bodies:
        kwargs: dict[str, Any] = {"headers": {**auth, "X-Request-Id": "req-1"}}
        if body is not None:
            kwargs["json"] = body
        fast, slow = _both(app, "post", "/v1/jobs/lean/trigger", **kwargs)
        assert _normal(fast) == _normal(slow), body
        assert fast.status_code == 201 and fast.headers["X-Request-Id"] == "req-1"
    assert served == [201] * len(bodies)
    with session_factory() as s:
        runs = s.scalars(sa.select(Run).order_by(Run.created_at)).all()
        assert len(runs) == 2 * len(bodies)
        assert runs[0].run_metadata == runs[1].run_metadata == {"m": "1"}  # job defaults merged on both paths


@pytest.mark.parametrize("case", [
    "bad-json", "wrong-type", "nul", "priority-range", "idempotency-header", "dry-run",
    "unknown-job", "bad-key", "no-key", "scope", "query", "trailing-slash", "schema", "disabled", "dedup",
    "array-body",
])
def test_everything_else_is_answered_by_flask(app, auth, session_factory, served, case) -> None:
    client = app.test_client()
    job = {"name": "Lean", "slug": "lean", "endpoint_url": "http://127.0.0.1:9/e", "payload_schema": SCHEMA}
    if case == "dedup":
        job["dedup_window_secs"] = 60
    client.post("/v1/jobs", json=job, headers=auth)
    if case == "disabled":
        with transaction(session_factory) as s:
            s.execute(sa.update(Job).values(enabled=False))
    path, headers, kwargs = "/v1/jobs/lean/trigger", dict(auth), {"json": {"payload": {"n": 1}}}
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
    fast, slow = _both(app, "post", path, headers=headers, **kwargs)
    assert served == []  # Flask answered it
    if case in ("idempotency-header", "dedup"):  # the second request found the first request's run
        assert (fast.status_code, slow.status_code) == (201, 200)
        return
    assert _normal(fast) == _normal(slow)
    assert fast.status_code in ((200,) if case == "dry-run" else (201,) if case == "query" else (400, 401, 403,
                                                                                                404, 409, 415, 422))


def test_a_chunked_body_is_read_by_flask(app, auth, session_factory, served) -> None:
    """No Content-Length: the lean path cannot know the body is empty, so Flask reads the stream."""
    import io

    client = app.test_client()
    client.post("/v1/jobs", json={"name": "Lean", "slug": "lean", "endpoint_url": "http://127.0.0.1:9/e"},
                headers=auth)
    body = b'{"payload": {"n": 42}}'
    response = client.post("/v1/jobs/lean/trigger", input_stream=io.BytesIO(body),
                           environ_overrides={"wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
                           headers={**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["payload"] == {"n": 42}
    assert served == []


def test_lean_path_counts_in_metrics_and_writes_one_run_per_request(app, client, auth, session_factory,
                                                                    served) -> None:
    client.post("/v1/jobs", json={"name": "Lean", "slug": "lean", "endpoint_url": "http://127.0.0.1:9/e"},
                headers=auth)
    for n in range(5):
        assert client.post("/v1/jobs/lean/trigger", json={"payload": {"n": n}}, headers=auth).status_code == 201
    assert served == [201] * 5
    text = client.get("/metrics").get_data(as_text=True)
    line = next(x for x in text.splitlines() if x.startswith("sluice_http_requests_total{")
                and 'route="/v1/jobs/<job>/trigger"' in x and 'status="201"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 5
    with session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Run)) == 5
