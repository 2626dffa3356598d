"""The API's hot statements are prepared once per connection and then only executed, as ``sluice api``
runs them (``create_app(settings)``: two pools, prepared statements); a connection that dies fails at most
one request, then the pool recovers."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Run
from tests.conftest import make_key

JOB = {"name": "Prepared", "slug": "prepared", "endpoint_url": "http://127.0.0.1:9/e"}


def prepared_runs(app: Flask) -> dict[str, int]:
    """Executions of each prepared statement, summed over the app's pooled connections (both pools)."""
    svc = app.extensions["sluice"]
    runs: dict[str, int] = {}
    for engine in (svc.engine, svc.read_engine):
        with ExitStack() as stack:  # hold every idle pooled connection at once, so each is asked once
            connections = [stack.enter_context(engine.connect()) for _ in range(_idle(engine))]
            for connection in connections:
                for name, count in connection.execute(sa.text(
                        "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements")):
                    runs[name] = runs.get(name, 0) + count
                connection.rollback()
    return runs


def _idle(engine: Engine) -> int:
    return engine.pool.checkedin()  # type: ignore[attr-defined,no-any-return]


def test_hot_statements_are_prepared_and_a_cached_page_costs_one(app: Flask, auth: dict[str, str]) -> None:
    client = app.test_client()
    job = client.post("/v1/jobs", json=JOB, headers=auth).get_json()
    for ref in ("prepared", job["id"]):
        assert client.post(f"/v1/jobs/{ref}/trigger", json={"payload": {"n": 1}}, headers=auth).status_code == 201
        assert client.get(f"/v1/jobs/{ref}", headers=auth).status_code == 200
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    assert client.get("/v1/jobs/prepared/versions", headers=auth).status_code == 200
    assert {"sluice_key_by_digest", "sluice_trigger_key_job_slug", "sluice_trigger_key_job_id",
            "sluice_insert_run_with_event", "sluice_key_job_slug", "sluice_key_job_id",
            "sluice_key_job_versions_51", "sluice_key_jobs_page_51"} <= set(prepared_runs(app))
    assert client.get("/v1/jobs?limit=200", headers=auth).status_code == 200  # renders and keeps the page
    before = prepared_runs(app)
    assert client.get("/v1/jobs?limit=200", headers=auth).status_code == 200
    after = prepared_runs(app)
    changed = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    assert changed == {"sluice_key_job_versions_201": 1}  # the key and the page's versions; renderings kept
    # Other page sizes run as text: an unknown caller cannot have a statement prepared per limit value.
    assert client.get("/v1/jobs?limit=1", headers=auth).status_code == 200
    assert prepared_runs(app) == after


def test_triggers_and_reads_by_id_and_slug(client: Any, auth: dict[str, str], session_factory: Any) -> None:
    job = client.post("/v1/jobs", json=JOB, headers=auth).get_json()
    for ref in (job["id"], "prepared", job["id"], "prepared"):  # the second of each EXECUTEs the prepared plan
        response = client.post(f"/v1/jobs/{ref}/trigger", json={"payload": {"n": 1}}, headers=auth)
        assert response.status_code == 201, response.get_json()
        created = response.get_json()
        assert created["job_id"] == job["id"]
        stored = client.get(f"/v1/runs/{created['id']}", headers=auth).get_json()
        assert stored == {k: v for k, v in created.items() if k not in ("payload_hash", "idempotency_hit")}
    for ref in (job["id"], "prepared", job["id"], "prepared"):  # GET job: the same lookup without has_edges
        response = client.get(f"/v1/jobs/{ref}", headers=auth)
        assert response.status_code == 200 and response.get_json() == job
    assert client.get("/v1/jobs/nope", headers=auth).status_code == 404
    assert client.post("/v1/jobs/nope/trigger", headers=auth).status_code == 404
    other = {"Authorization": f"Bearer {make_key(session_factory, 'proj-b')}"}
    assert client.post("/v1/jobs/prepared/trigger", headers=other).status_code == 404
    keyed = client.post("/v1/jobs/prepared/trigger", json={}, headers={**auth, "Idempotency-Key": "k1"})
    again = client.post("/v1/jobs/prepared/trigger", json={}, headers={**auth, "Idempotency-Key": "k1"})
    assert (keyed.status_code, again.status_code) == (201, 200)
    assert again.get_json()["idempotency_hit"] is True


def test_job_list_pages_have_no_gaps(client: Any, auth: dict[str, str]) -> None:
    made = [client.post("/v1/jobs", json={**JOB, "slug": f"p-{i}", "tags": {"n": str(i)}}, headers=auth).get_json()
            for i in range(5)]
    seen: list[dict[str, Any]] = []
    url = "/v1/jobs?limit=2"
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200
        seen.extend(response.get_json())
        cursor = response.headers.get("X-Next-Cursor")
        url = f"/v1/jobs?limit=2&cursor={cursor}" if cursor else ""
    assert [job["id"] for job in seen] == [job["id"] for job in reversed(made)]  # newest first, no gaps
    assert seen[0] == client.get(f"/v1/jobs/{made[-1]['id']}", headers=auth).get_json()  # same rendering
    assert [j["slug"] for j in client.get("/v1/jobs?tag_key=n&tag_value=3", headers=auth).get_json()] == ["p-3"]
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer sk_unknown"}).status_code == 401


def _kill_idle_app_connections(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:  # the app's pooled connections are the idle ones without a name
        s.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                          "AND application_name = '' AND state = 'idle'"))
        s.commit()


@pytest.mark.parametrize("method, path", [("GET", "/v1/jobs/prepared/versions"), ("GET", "/v1/jobs/prepared"),
                                          ("GET", "/v1/jobs"), ("POST", "/v1/jobs/prepared/trigger")])
def test_a_killed_connection_fails_at_most_one_request(client: Any, auth: dict[str, str], session_factory: Any,
                                                       method: str, path: str) -> None:
    """Flask's path answers 503 once, then a fresh connection serves; the front layer hands a failed read
    to Flask, whose fresh connection serves it (or answers its 503). Exactly one run per 201."""
    client.post("/v1/jobs", json=JOB, headers=auth)
    assert client.open(path, method=method, headers=auth).status_code in (200, 201)
    _kill_idle_app_connections(session_factory)
    statuses = [client.open(path, method=method, headers=auth).status_code for _ in range(3)]
    assert statuses.count(503) <= 1 and statuses[-1] in (200, 201), statuses
    if method == "POST":
        with session_factory() as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(Run)) == 1 + statuses.count(201)
