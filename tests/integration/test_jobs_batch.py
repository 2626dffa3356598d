"""POST /v1/jobs/batch (§3.3) and batch-enable / batch-disable (§3.4)."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa

from shared.apikeys import Principal
from shared.clock import utcnow
from shared.db.models import Job, JobVersion, Run
from shared.egress.addresses import AddressPolicy
from shared.jobs.lifecycle import create_job
from shared.messages.queue_state import ready_messages
from shared.webhooks.sealing import SecretBox
from tests.conftest import TEST_SECRET_KEY
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
    # every failing item, each with the message a single create would give it (schema 422, semantic 400,
    # slug 409), whatever kind of failure came first
    assert error["errors"] == {
        "1": {"slug": ["Must match ^[a-z0-9][a-z0-9_-]*$."]},
        "2": {"slug": ['slug "exists" already exists in this project']},
        "3": {"cron": ['cron: invalid expression "61 * * * *"']},
        "4": {"slug": ['slug "ok-1" already exists in this project']},
        "5": {"_schema": ["Invalid input type."]},
        "6": {"endpoint_url": ["endpoint_url: must use http or https"]},
    }
    single = client.post("/v1/jobs", json=job_body("Bad Slug"), headers=auth)
    assert assert_error(single, 422)["errors"] == error["errors"]["1"]
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


def test_a_schema_failure_first_does_not_hide_later_failures(client, auth, session):
    """The issue's case: item 0 fails its schema, later items a slug conflict and a bad cron."""
    create(client, auth, "taken")
    items = [job_body("zero", max_attempts="3"), job_body("taken"), job_body("fine", cron="0 0 30 2 *"),
             {**job_body("claims-it"), "name": ""}, job_body("claims-it")]
    error = assert_error(client.post("/v1/jobs/batch", json={"jobs": items}, headers=auth), 422)
    assert set(error["errors"]["jobs"]) == {"0", "1", "2", "3", "4"}
    assert set(error["errors"]["jobs"]["0"]) == {"max_attempts"}
    assert error["errors"]["jobs"]["2"] == {"cron": ["cron: expression never matches"]}
    assert set(error["errors"]["jobs"]["3"]) == {"name"}  # a schema failure; its valid slug is still claimed
    assert error["errors"]["jobs"]["4"] == {"slug": ['slug "claims-it" already exists in this project']}
    assert _count(session, Job) == 1


def test_a_schema_failure_precedes_a_project_mismatch_which_precedes_the_rest(client, auth):
    mismatch = {**job_body("p1"), "project_id": "proj-b"}
    assert_error(client.post("/v1/jobs/batch", json=[mismatch, job_body("p2", cron="61 * * * *")], headers=auth),
                 403)
    error = assert_error(client.post("/v1/jobs/batch", json=[mismatch, job_body("p2", name="")], headers=auth), 422)
    assert set(error["errors"]) == {"1"}


def test_a_slug_taken_between_check_and_insert_is_422_by_index(client, auth, app, session_factory):
    """Another request inserts a slug of the batch after the batch checked it: 422 naming that item."""
    principal = Principal("racer", "proj-a", frozenset({"jobs:write"}))
    rival = session_factory()
    create_job(rival, principal, job_body("contested"), now=utcnow(), policy=AddressPolicy(allow_private=True),
               box=SecretBox((TEST_SECRET_KEY,)))  # not committed yet
    answer: list[Any] = []
    batch = [job_body("free-1"), job_body("contested"), job_body("free-2")]
    worker = threading.Thread(target=lambda: answer.append(client.post("/v1/jobs/batch", json=batch, headers=auth)))
    worker.start()
    try:
        _wait_for_lock_wait(session_factory)  # the batch passed its check and waits on the rival's slug
    finally:
        rival.commit()
        rival.close()
    worker.join(timeout=30)
    error = assert_error(answer[0], 422)
    assert error["errors"] == {"1": {"slug": ['slug "contested" already exists in this project']}}
    assert [j["slug"] for j in client.get("/v1/jobs", headers=auth).json] == ["contested"]


def _wait_for_lock_wait(session_factory, timeout_secs: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        with session_factory() as s:
            waiting = s.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO jobs%'"))
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("the batch never waited on the rival's insert")
