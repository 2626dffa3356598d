"""The API as ``sluice api`` builds it (``create_app(settings)``: its own engines, prepared statements and
the driver-cursor hot path of ``shared.prepared``), not the shared test engine the other API tests use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from shared.apikeys import revoke_key
from shared.clock import utcnow
from shared.config import Settings
from shared.db import transaction
from shared.models import ApiKey, Run, RunEvent
from tests.conftest import make_key

JOB = {"name": "Prepared", "slug": "prepared", "endpoint_url": "http://127.0.0.1:9/e"}


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


def test_trigger_and_reads_on_the_driver_path(live_app: Flask, auth: dict[str, str],
                                              session_factory: sessionmaker[Session],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.prepared

    driver_calls: list[str] = []
    real = shared.prepared._run_on_driver

    def counting(connection: Any, statement: Any, params: Any, fetch: bool) -> Any:
        driver_calls.append(statement.name)
        return real(connection, statement, params, fetch)

    monkeypatch.setattr(shared.prepared, "_run_on_driver", counting)
    client = live_app.test_client()
    job = client.post("/v1/jobs", json=JOB, headers=auth).get_json()
    for ref in ("prepared", job["id"]):
        response = client.post(f"/v1/jobs/{ref}/trigger", json={"payload": {"n": 1}, "tags": {"t": "x"}},
                               headers=auth)
        assert response.status_code == 201, response.get_json()
        body: dict[str, Any] = response.get_json()
        assert body["status"] == "queued" and response.headers["Location"] == f"/v1/runs/{body['id']}"
        with session_factory() as s:
            run = s.get(Run, body["id"])
            assert run is not None and run.payload == '{"n":1}' and run.tags == {"t": "x"}
            events = s.scalars(sa.select(RunEvent).where(RunEvent.run_id == body["id"])).all()
            assert [(e.type, e.data) for e in events] == [("state_change", {"from": None, "to": "queued"})]
        got = client.get(f"/v1/jobs/{ref}", headers=auth)
        assert got.status_code == 200 and got.get_json()["id"] == job["id"]
    # idempotency takes the transactional path: a second trigger with the key returns the first run
    first = client.post("/v1/jobs/prepared/trigger", json={"idempotency_key": "k1"}, headers=auth)
    again = client.post("/v1/jobs/prepared/trigger", json={"idempotency_key": "k1"}, headers=auth)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    assert {"sluice_trigger_key_job_slug", "sluice_trigger_key_job_id", "sluice_insert_run_with_event",
            "sluice_key_job_slug", "sluice_key_job_id"} <= set(driver_calls)


def test_auth_and_lookup_errors_on_the_driver_path(live_app: Flask, auth: dict[str, str],
                                                   session_factory: sessionmaker[Session]) -> None:
    client = live_app.test_client()
    client.post("/v1/jobs", json=JOB, headers=auth)
    assert client.post("/v1/jobs/nope/trigger", headers=auth).status_code == 404
    assert client.post("/v1/jobs/prepared/trigger", headers={"Authorization": "Bearer sk_unknown"}).status_code == 401
    other = {"Authorization": f"Bearer {make_key(session_factory, project_id='proj-b')}"}
    assert client.post("/v1/jobs/prepared/trigger", headers=other).status_code == 404
    with transaction(session_factory) as s:
        key_id = s.scalars(sa.select(ApiKey.id).where(ApiKey.project_id == "proj-a")).first()
        assert key_id is not None
        revoke_key(s, key_id, now=utcnow())
    assert client.post("/v1/jobs/prepared/trigger", headers=auth).status_code == 401


def test_a_killed_connection_fails_one_request_with_503_then_recovers(
        live_app: Flask, auth: dict[str, str], session_factory: sessionmaker[Session]) -> None:
    client = live_app.test_client()
    client.post("/v1/jobs", json=JOB, headers=auth)
    assert client.post("/v1/jobs/prepared/trigger", headers=auth).status_code == 201
    with session_factory() as s:
        s.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                          "AND application_name = '' AND state = 'idle'"))
        s.commit()
    statuses = [client.post("/v1/jobs/prepared/trigger", headers=auth).status_code for _ in range(3)]
    assert statuses[0] == 503 and statuses[-1] == 201, statuses
    with session_factory() as s:
        runs = s.scalar(sa.select(sa.func.count()).select_from(Run))
        assert runs == 1 + statuses.count(201)  # a 503 wrote nothing
