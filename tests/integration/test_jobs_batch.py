"""POST /v1/jobs/batch (§3.3) and batch-enable / batch-disable (§3.4)."""

from __future__ import annotations

import sqlalchemy as sa

from shared.db.models import Job, JobVersion, Run
from shared.messages import ready_messages
from tests.factories import make_run
from tests.integration.jobs_support import JOB_FIELDS, assert_error, create, job_body


def _count(session, model):
    session.expire_all()
    return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_batch_array_form_creates_in_order(client, auth, session):
    response = client.post("/v1/jobs/batch", json=[job_body("b1"), job_body("b2", cron="@daily")], headers=auth)
    assert response.status_code == 201
    assert [j["slug"] for j in response.json] == ["b1", "b2"]
    assert all(set(j) == JOB_FIELDS and j["version"] == 1 for j in response.json)
    assert _count(session, JobVersion) == 2


def test_batch_object_form(client, auth):
    response = client.post("/v1/jobs/batch", json={"jobs": [job_body("o1")]}, headers=auth)
    assert response.status_code == 201 and response.json[0]["slug"] == "o1"


def test_batch_is_atomic_and_reports_every_failing_index(client, auth, session):
    create(client, auth, "exists")
    items = [job_body("ok-1"), job_body("Bad Slug"), job_body("exists"), job_body("ok-2", cron="61 * * * *"),
             job_body("ok-1"), "not-an-object", job_body("ok-3", endpoint_url="ftp://127.0.0.1/")]
    error = assert_error(client.post("/v1/jobs/batch", json=items, headers=auth), 422)
    # schema failures are reported first; no semantic check runs while any item fails its schema
    assert set(error["errors"]) == {"1", "5"}
    assert "slug" in error["errors"]["1"] and error["errors"]["5"] == {"_schema": ["Invalid input type."]}
    items = [job_body("ok-1"), job_body("exists"), job_body("ok-2", cron="61 * * * *"), job_body("ok-1"),
             job_body("ok-3", endpoint_url="ftp://127.0.0.1/")]
    error = assert_error(client.post("/v1/jobs/batch", json={"jobs": items}, headers=auth), 422)
    assert error["errors"] == {"jobs": {
        "1": {"slug": ['slug "exists" already exists in this project']},
        "2": {"cron": ['cron: invalid expression "61 * * * *"']},
        "3": {"slug": ['slug "ok-1" already exists in this project']},
        "4": {"endpoint_url": ["endpoint_url: must use http or https"]},
    }}
    assert _count(session, Job) == 1


def test_batch_counts_and_root_types(client, auth):
    assert_error(client.post("/v1/jobs/batch", json=[], headers=auth), 422)
    assert_error(client.post("/v1/jobs/batch", json={"jobs": []}, headers=auth), 422)
    many = [job_body(f"m-{i}") for i in range(101)]
    assert "_schema" in assert_error(client.post("/v1/jobs/batch", json=many, headers=auth), 422)["errors"]
    assert "jobs" in assert_error(client.post("/v1/jobs/batch", json={"jobs": many}, headers=auth), 422)["errors"]
    for raw in ('{}', '{"jobs": "x"}', '"x"', "5", "null", "true", '{"jobs": null}'):
        assert_error(client.post("/v1/jobs/batch", data=raw, content_type="application/json", headers=auth), 422)
    full = [job_body(f"m-{i}") for i in range(100)]
    assert len(client.post("/v1/jobs/batch", json=full, headers=auth).json) == 100


def test_batch_project_mismatch_is_403_for_the_whole_request(client, auth, session):
    items = [job_body("x1"), job_body("x2", project_id="proj-b")]
    assert_error(client.post("/v1/jobs/batch", json=items, headers=auth), 403)
    assert _count(session, Job) == 0


def test_batch_enable_disable_by_id_slug_and_alias(client, auth, other_auth, session):
    a, b = create(client, auth, "a"), create(client, auth, "b", enabled=False)
    foreign = create(client, other_auth, "f")
    response = client.post("/v1/jobs/batch-disable",
                           json={"ids": [a["id"], "a", "b", "unknown", foreign["id"], "f"]}, headers=auth)
    assert response.status_code == 200 and response.json == {"updated": 2}
    after_a = client.get("/v1/jobs/a", headers=auth).json
    after_b = client.get("/v1/jobs/b", headers=auth).json
    assert after_a["enabled"] is False and after_a["version"] == 1 and after_a["updated_at"] > a["updated_at"]
    assert after_b == b  # already disabled: untouched
    assert client.get("/v1/jobs/f", headers=other_auth).json["enabled"] is True
    assert client.post("/v1/jobs/batch-enable", json={"job_ids": ["a", "b"]}, headers=auth).json == {"updated": 2}
    assert client.get("/v1/jobs/b", headers=auth).json["enabled"] is True
    assert _count(session, JobVersion) == 3  # no versions written by enable/disable


def test_batch_enable_releases_held_runs(client, auth, session, app, redis_client):
    job = create(client, auth, "h", enabled=False)
    orm_job = session.get(Job, job["id"])
    runs = [make_run(session, orm_job, status="queued", held_at=orm_job.created_at) for _ in range(3)]
    session.commit()
    broker = app.extensions["sluice"].broker  # the app's own queue: nothing consumes it here
    before = ready_messages(broker)
    assert client.post("/v1/jobs/batch-enable", json={"ids": ["h"]}, headers=auth).json == {"updated": 1}
    assert ready_messages(broker) == before + 3
    session.expire_all()
    assert all(session.get(Run, r.id).held_at is None for r in runs)


def test_batch_toggle_validation(client, auth):
    for body in ({}, {"ids": ["a"], "job_ids": ["a"]}, {"ids": []}, {"ids": ["x"] * 101}, {"ids": "a"},
                 {"ids": [1]}, {"job_ids": None}):
        assert_error(client.post("/v1/jobs/batch-enable", json=body, headers=auth), 422)
    assert client.post("/v1/jobs/batch-disable", json={"ids": ["x"] * 100}, headers=auth).json == {"updated": 0}
