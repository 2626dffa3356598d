"""DELETE /v1/jobs/{job} (§3.6) and POST /v1/jobs/{job}/clone (§3.8)."""

from __future__ import annotations

import sqlalchemy as sa

from shared.db.models import Job, JobDependency, JobVersion, Run, RunEvent, WebhookDelivery
from tests.factories import make_dependency, make_run
from tests.integration.jobs_support import SECRET, assert_error, create, opened


def test_delete_without_runs_then_404(client, auth, session):
    job = create(client, auth, "gone")
    client.patch("/v1/jobs/gone", json={"description": "v2"}, headers=auth)
    response = client.delete("/v1/jobs/gone", headers=auth)
    assert response.status_code == 204 and response.get_data() == b""
    assert_error(client.delete("/v1/jobs/gone", headers=auth), 404)
    assert_error(client.get(f"/v1/jobs/{job['id']}", headers=auth), 404)
    assert session.scalar(sa.select(sa.func.count()).select_from(JobVersion)) == 0


def test_delete_with_active_runs_is_409_unless_forced(client, auth, session):
    job = create(client, auth, "busy", webhook_url="http://127.0.0.1:9/hook")
    orm_job = session.get(Job, job["id"])
    for status in ("queued", "delayed", "waiting", "executing", "completed"):
        make_run(session, orm_job, status=status)
    session.commit()
    assert_error(client.delete("/v1/jobs/busy", headers=auth), 409,
                 "job has 4 active runs; cancel them or retry with ?force=true")
    assert_error(client.delete("/v1/jobs/busy?force=false", headers=auth), 409)
    assert_error(client.delete("/v1/jobs/busy?force=maybe", headers=auth), 422)
    assert client.delete("/v1/jobs/busy?force=TRUE", headers=auth).status_code == 204
    session.expire_all()
    for model in (Job, Run, RunEvent, WebhookDelivery, JobVersion):
        assert session.scalar(sa.select(sa.func.count()).select_from(model)) == 0, model


def test_delete_removes_edges_and_releases_dependents(client, auth, session):
    up = create(client, auth, "up")
    down = create(client, auth, "down")
    orm_up, orm_down = session.get(Job, up["id"]), session.get(Job, down["id"])
    make_dependency(session, orm_down, orm_up)
    waiting = make_run(session, orm_down, status="waiting")
    session.commit()
    assert client.delete("/v1/jobs/up", headers=auth).status_code == 204
    session.expire_all()
    assert session.scalar(sa.select(sa.func.count()).select_from(JobDependency)) == 0
    assert session.get(Run, waiting.id).status == "queued"


def test_delete_isolation(client, auth, other_auth):
    create(client, auth, "mine")
    assert_error(client.delete("/v1/jobs/mine", headers=other_auth), 404)
    assert client.get("/v1/jobs/mine", headers=auth).status_code == 200


def test_clone_copies_configuration(client, auth, session, settings):
    source = create(client, auth, "src", cron="@daily", webhook_secret=SECRET, enabled=False, tags={"a": "b"},
                    rate_limit_keys=[{"name": "k", "max": 2, "window_secs": 5}], max_concurrency=3)
    client.patch("/v1/jobs/src", json={"description": "patched"}, headers=auth)
    response = client.post("/v1/jobs/src/clone", json={"name": "Copy", "slug": "copy", "cron": "ignored"},
                           headers=auth)
    assert response.status_code == 201
    clone = response.json
    assert response.headers["Location"] == f"/v1/jobs/{clone['id']}"
    assert clone["id"] != source["id"] and clone["version"] == 1 and clone["version_id"] != source["version_id"]
    assert clone["enabled"] is True and clone["name"] == "Copy" and clone["slug"] == "copy"
    assert clone["description"] == "patched" and clone["cron"] == "@daily" and clone["tags"] == {"a": "b"}
    assert clone["rate_limit_keys"] == source["rate_limit_keys"] and clone["max_concurrency"] == 3
    assert clone["webhook_secret"] == "whsec_…XY9Q"
    assert opened(settings, session.get(Job, clone["id"]).webhook_secret) == SECRET
    versions = client.get("/v1/jobs/copy/versions", headers=auth).json
    assert [v["version"] for v in versions] == [1]


def test_clone_errors(client, auth, other_auth):
    create(client, auth, "src")
    create(client, auth, "taken")
    assert_error(client.post("/v1/jobs/src/clone", json={"name": "x"}, headers=auth), 422)
    assert_error(client.post("/v1/jobs/src/clone", json={"name": "x", "slug": "Bad"}, headers=auth), 422)
    assert_error(client.post("/v1/jobs/src/clone", json={"name": "", "slug": "ok"}, headers=auth), 422)
    assert_error(client.post("/v1/jobs/nope/clone", json={"name": "x", "slug": "ok"}, headers=auth), 404)
    assert_error(client.post("/v1/jobs/src/clone", json={"name": "x", "slug": "taken"}, headers=auth), 409,
                 'slug "taken" already exists in this project')
    assert_error(client.post("/v1/jobs/src/clone", json={"name": "x", "slug": "ok"}, headers=other_auth), 404)
