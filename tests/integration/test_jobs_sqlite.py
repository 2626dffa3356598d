"""The jobs endpoints on the embedded SQLite backend (health's percentile is computed in Python there)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.clock import utcnow
from shared.db.engine import make_engine, make_session_factory
from shared.db.migrate import upgrade
from shared.db.models import Job
from tests.conftest import make_key
from tests.factories import make_run
from tests.integration.jobs_support import create


@pytest.fixture()
def sqlite_app(tmp_path, settings, redis_client):
    from api.app import create_app
    from api.context import Services
    from shared.messages import make_broker

    url = f"sqlite:///{tmp_path / 'sluice.db'}"
    upgrade(url)
    engine = make_engine(url)
    sqlite_settings = settings.with_overrides(database_url=url)
    services = Services(settings=sqlite_settings, engine=engine, session_factory=make_session_factory(engine),
                        redis=redis_client, broker=make_broker(sqlite_settings, client=redis_client))
    yield create_app(sqlite_settings, services=services), services.session_factory
    engine.dispose()


def test_jobs_api_on_sqlite(sqlite_app):
    app, factory = sqlite_app
    client = app.test_client()
    auth = {"Authorization": f"Bearer {make_key(factory)}"}
    for i in range(7):
        create(client, auth, f"s{i}", tags={"n": str(i % 2)})
    page = client.get("/v1/jobs?limit=2&tag_key=n&tag_value=1", headers=auth)
    rest = client.get(f"/v1/jobs?limit=2&tag_key=n&tag_value=1&cursor={page.headers['X-Next-Cursor']}",
                      headers=auth)
    assert [j["slug"] for j in page.json + rest.json] == ["s5", "s3", "s1"]
    plain = client.get("/v1/jobs?limit=4", headers=auth)  # no filters: PostgreSQL reads it with the key
    tail = client.get(f"/v1/jobs?cursor={plain.headers['X-Next-Cursor']}", headers=auth)
    assert [j["slug"] for j in plain.json + tail.json] == [f"s{i}" for i in range(6, -1, -1)]
    assert client.patch("/v1/jobs/s1", json={"cron": "@hourly"}, headers=auth).json["version"] == 2
    assert client.post("/v1/jobs/s1/dependencies", json={"depends_on_job_id": "s2"}, headers=auth).status_code == 201
    assert client.post("/v1/jobs/s2/dependencies", json={"depends_on_job_id": "s1"}, headers=auth).status_code == 409
    with factory() as s:
        job = s.query(Job).filter_by(slug="s1").one()
        now = utcnow()
        for secs in (1, 2, 3, 4, 10):
            make_run(s, job, status="completed", started_at=now - timedelta(seconds=secs + 5),
                     finished_at=now - timedelta(seconds=5))
        s.commit()
    health = client.get("/v1/jobs/s1/health?window=1h", headers=auth).json
    assert health["total_runs"] == 5 and health["p95_duration_secs"] == 8.8 and health["avg_duration_secs"] == 4
    assert health["health_score"] == round(70 + 30 * 8 / 8.8, 2)
    assert client.delete("/v1/jobs/s1?force=true", headers=auth).status_code == 204
