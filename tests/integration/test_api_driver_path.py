"""The API's hot statements on the driver cursor (``shared.db.prepared.HotQuery``/``run_hot``) as
``sluice api`` builds it (``create_app(settings)``: own engines, prepared statements). The responses
themselves are checked in ``test_api_fast_paths``; here: that the path is taken, list pages, and failure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

import shared.db.prepared
from shared.config import Settings
from shared.db.models import Run
from tests.conftest import make_key

JOB = {"name": "Driver", "slug": "driver", "endpoint_url": "http://127.0.0.1:9/e"}


@pytest.fixture(name="live_app")
def live_app_fixture(settings: Settings) -> Iterator[Flask]:
    from api.app import create_app

    app = create_app(settings)
    app.testing = True
    yield app
    svc = app.extensions["sluice"]
    svc.engine.dispose()
    svc.read_session_factory.kw["bind"].dispose()


@pytest.fixture(name="auth")
def auth_fixture(session_factory: sessionmaker[Session]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(session_factory)}"}


def test_hot_statements_run_on_the_driver_cursor(live_app: Flask, auth: dict[str, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = shared.db.prepared._run_on_driver

    def counting(connection: Any, statement: Any, params: Any, fetch: Any) -> Any:
        calls.append(statement.name)
        return real(connection, statement, params, fetch)

    monkeypatch.setattr(shared.db.prepared, "_run_on_driver", counting)
    client = live_app.test_client()
    job = client.post("/v1/jobs", json=JOB, headers=auth).get_json()
    for ref in ("driver", job["id"]):
        assert client.post(f"/v1/jobs/{ref}/trigger", json={"payload": {"n": 1}}, headers=auth).status_code == 201
        assert client.get(f"/v1/jobs/{ref}", headers=auth).status_code == 200
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    assert {"sluice_key_by_digest", "sluice_trigger_key_job_slug", "sluice_trigger_key_job_id",
            "sluice_insert_run_with_event", "sluice_key_job_slug", "sluice_key_job_id",
            "sluice_key_job_versions_51", "sluice_key_jobs_page_51"} <= set(calls)
    calls.clear()
    assert client.get("/v1/jobs?limit=1", headers=auth).status_code == 200
    assert calls == ["sluice_key_job_versions_2"]  # the key and the page's versions; renderings cached


def test_job_list_pages_on_the_driver_path(live_app: Flask, auth: dict[str, str]) -> None:
    client = live_app.test_client()
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


def test_a_killed_connection_fails_one_request_with_503_then_recovers(
        live_app: Flask, auth: dict[str, str], session_factory: sessionmaker[Session]) -> None:
    client = live_app.test_client()
    client.post("/v1/jobs", json=JOB, headers=auth)
    assert client.get("/v1/jobs/driver/versions", headers=auth).status_code == 200
    _kill_idle_app_connections(session_factory)
    statuses = [client.get("/v1/jobs/driver/versions", headers=auth).status_code for _ in range(3)]
    assert statuses[0] == 503 and statuses[-1] == 200, statuses


def test_a_job_read_on_a_killed_connection_is_answered_by_the_flask_path(
        live_app: Flask, auth: dict[str, str], session_factory: sessionmaker[Session]) -> None:
    """The lean job read (``api.fast_job_get``) hands a failed read to Flask: its fresh connection serves
    it, or a failure there is Flask's 503."""
    client = live_app.test_client()
    client.post("/v1/jobs", json=JOB, headers=auth)
    assert client.get("/v1/jobs/driver", headers=auth).status_code == 200
    _kill_idle_app_connections(session_factory)
    statuses = [client.get("/v1/jobs/driver", headers=auth).status_code for _ in range(3)]
    assert set(statuses) <= {200, 503} and statuses[-1] == 200, statuses


def test_a_trigger_on_a_killed_connection_is_answered_by_the_flask_path(
        live_app: Flask, auth: dict[str, str], session_factory: sessionmaker[Session]) -> None:
    """The lean trigger path (``api.fast_trigger``) hands a failed lookup to Flask, whose fresh connection
    serves it; a failure there would be Flask's 503. Exactly one run per 201 either way."""
    client = live_app.test_client()
    client.post("/v1/jobs", json=JOB, headers=auth)
    assert client.post("/v1/jobs/driver/trigger", headers=auth).status_code == 201
    _kill_idle_app_connections(session_factory)
    statuses = [client.post("/v1/jobs/driver/trigger", headers=auth).status_code for _ in range(3)]
    assert set(statuses) <= {201, 503} and statuses[-1] == 201, statuses
    with session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Run)) == 1 + statuses.count(201)


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=abc", "limit=%EF%BC%95", "limit=1&limit=2",
                                   "cursor=garbage", "limit=5&cursor=", "limit=99999999999999999999"])
def test_list_queries_the_prefetch_skips_get_the_views_answer(live_app: Flask, auth: dict[str, str],
                                                              query: str) -> None:
    """Whatever the list's query holds, the key + page prefetch never turns it into a 5xx: it only serves
    the plain ones, and the view's argument rules answer the rest as before."""
    client = live_app.test_client()
    client.post("/v1/jobs", json=JOB, headers=auth)
    response = client.get(f"/v1/jobs?{query}", headers=auth)
    assert response.status_code in (200, 400, 422), (query, response.get_json())
