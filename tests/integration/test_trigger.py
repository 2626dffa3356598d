"""POST /v1/jobs/{job}/trigger (CONTRACT §4.1–4.3, §4.5)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from shared.clock import format_ts, parse_ts, utcnow
from shared.db.models import Run, RunEvent
from tests.factories import make_dependency, make_job, make_run


@pytest.fixture()
def job(session):
    created = make_job(session, slug="hello", tags={"team": "a", "env": "prod"},
                       default_run_metadata={"owner": "x"}, retry_strategy="fixed", max_attempts=4)
    session.commit()
    return created


def trigger(client, auth, ref, body=None, headers=None, raw=None):
    extra = {"Content-Type": "application/json", **(headers or {})}
    data = raw if raw is not None else (json.dumps(body) if body is not None else "")
    return client.post(f"/v1/jobs/{ref}/trigger", data=data, headers={**auth, **extra})


def test_empty_body_creates_queued_run(client, auth, job, redis_client):
    response = client.post("/v1/jobs/hello/trigger", headers=auth)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert response.headers["Location"] == f"/v1/runs/{body['id']}"
    assert body["status"] == "queued" and body["payload"] == {} and body["idempotency_hit"] is False
    assert body["payload_hash"] == hashlib.sha256(b"{}").hexdigest()
    assert body["tags"] == {"team": "a", "env": "prod"} and body["metadata"] == {"owner": "x"}
    assert body["job_version"] == 1 and body["job_version_id"] == job.version_id
    assert body["retry_backoff"] == "fixed" and body["triggered_by"] == "manual"
    assert body["created_by"].startswith("apikey:") and body["attempt"] == 0
    assert body["parent_run_id"] is None and body["expires_at"] is None
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 1


def test_all_fields(client, auth, job, session):
    at = utcnow() + timedelta(hours=1)
    body = {"payload": {"b": 1, "a": "é", "dependency_key": "dk"}, "idempotency_key": "k1", "priority": 7,
            "scheduled_at": format_ts(at), "metadata": {"m": "1", "owner": "y"}, "tags": {"env": "dev"},
            "concurrency_key": "ck", "ttl_secs": 60, "max_attempts_override": 1, "timeout_secs_override": 9,
            "debug_mode": True}
    response = trigger(client, auth, job.id, body)
    assert response.status_code == 201, response.get_json()
    run = response.get_json()
    assert run["status"] == "delayed" and run["priority"] == 7 and run["idempotency_key"] == "k1"
    assert run["payload"] == {"a": "é", "b": 1, "dependency_key": "dk"}
    canonical = '{"a":"é","b":1,"dependency_key":"dk"}'
    assert run["payload_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert run["metadata"] == {"owner": "y", "m": "1", "dependency_key": "dk"}
    assert run["tags"] == {"team": "a", "env": "dev"}
    assert parse_ts(run["scheduled_at"]) == at
    assert parse_ts(run["expires_at"]) == at + timedelta(seconds=60)
    assert run["concurrency_key"] == "ck" and run["debug_mode"] is True
    assert run["max_attempts_override"] == 1 and run["timeout_secs_override"] == 9
    assert run["retry_initial_delay_secs"] == 0 and run["retry_max_delay_secs"] == 0
    stored = session.get(Run, run["id"])
    assert stored.payload == canonical and stored.due_at == at and stored.ttl_secs == 60
    events = session.scalars(sa.select(RunEvent).where(RunEvent.run_id == run["id"])).all()
    assert [(e.type, e.data) for e in events] == [("state_change", {"from": None, "to": "delayed"})]


def test_delay_secs_and_past_schedule(client, auth, job):
    before = utcnow()
    delayed = trigger(client, auth, "hello", {"delay_secs": 30}).get_json()
    assert delayed["status"] == "delayed"
    assert parse_ts(delayed["scheduled_at"]) >= before + timedelta(seconds=30)
    past = trigger(client, auth, "hello", {"scheduled_at": "2001-01-01T00:00:00Z"}).get_json()
    assert past["status"] == "queued" and parse_ts(past["scheduled_at"]) >= before


@pytest.mark.parametrize("body, field", [
    ({"priority": 11}, "priority"), ({"priority": "1"}, "priority"), ({"priority": 1.0}, "priority"),
    ({"priority": True}, "priority"), ({"delay_secs": -1}, "delay_secs"), ({"ttl_secs": 2592001}, "ttl_secs"),
    ({"idempotency_key": ""}, "idempotency_key"), ({"idempotency_key": "x" * 257}, "idempotency_key"),
    ({"idempotency_key": "cron:abc"}, "idempotency_key"), ({"idempotency_key": 5}, "idempotency_key"),
    ({"scheduled_at": "2030-01-01T00:00:00"}, "scheduled_at"), ({"scheduled_at": "tomorrow"}, "scheduled_at"),
    ({"scheduled_at": "2999-01-01T00:00:00Z"}, "scheduled_at"),
    ({"scheduled_at": "20300301T090000Z"}, "scheduled_at"), ({"scheduled_at": "2030-W09-6T09:00:00Z"}, "scheduled_at"),
    ({"scheduled_at": "2030-03-01T09:00Z"}, "scheduled_at"),
    ({"scheduled_at": "2030-01-01T00:00:00Z", "delay_secs": 1}, "delay_secs"),
    ({"tags": {f"k{i}": "v" for i in range(21)}}, "tags"), ({"tags": {"k": 1}}, "tags"),
    ({"metadata": {"k": "v" * 1025}}, "metadata"), ({"metadata": []}, "metadata"),
    ({"concurrency_key": "c" * 257}, "concurrency_key"), ({"max_attempts_override": 0}, "max_attempts_override"),
    ({"timeout_secs_override": 86401}, "timeout_secs_override"), ({"debug_mode": "true"}, "debug_mode"),
    ({"dry_run": 1}, "dry_run"),
])
def test_field_errors(client, auth, job, body, field):
    response = trigger(client, auth, "hello", body)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]


def test_422_precedes_404_and_409(client, auth, session):
    make_job(session, slug="off", enabled=False)
    session.commit()
    assert trigger(client, auth, "nope", {"priority": 99}).status_code == 422
    assert trigger(client, auth, "nope", {}).status_code == 404
    assert trigger(client, auth, "off", {"priority": 99}).status_code == 422
    response = trigger(client, auth, "off", {})
    assert response.status_code == 409
    assert response.get_json()["message"] == "job is disabled; enable it before triggering runs"


def test_body_root_and_nulls(client, auth, job):
    assert trigger(client, auth, "hello", [1]).status_code == 422
    nulls = {k: None for k in ("payload", "idempotency_key", "priority", "scheduled_at", "delay_secs", "metadata",
                               "tags", "concurrency_key", "ttl_secs", "max_attempts_override",
                               "timeout_secs_override", "debug_mode", "dry_run")}
    response = trigger(client, auth, "hello", nulls)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["payload"] == {}
    assert trigger(client, auth, "hello", {"concurrency_key": ""}).get_json()["concurrency_key"] is None


def test_other_project_is_404_and_scope_403(client, other_auth, job, session_factory):
    from tests.conftest import make_key

    assert trigger(client, other_auth, "hello", {}).status_code == 404
    reader = {"Authorization": f"Bearer {make_key(session_factory, 'proj-a', 'runs:read')}"}
    assert trigger(client, reader, "hello", {}).status_code == 403


def test_payload_schema(client, auth, session):
    schema = {"type": "object", "required": ["user"], "properties": {
        "user": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
        "email": {"type": "string", "format": "email"}, "items": {"type": "array", "items": {"type": "string"}}}}
    make_job(session, slug="typed", payload_schema=schema)
    session.commit()
    response = trigger(client, auth, "typed", {"payload": {"user": {}}})
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"payload": ["$.user.id: 'id' is a required property"]}
    response = trigger(client, auth, "typed", {"payload": {"user": {"id": "x"}, "items": [1, "a", 2]}})
    assert sorted(response.get_json()["errors"]["payload"]) == [
        "$.items[0]: 1 is not of type 'string'", "$.items[2]: 2 is not of type 'string'",
        "$.user.id: 'x' is not of type 'integer'"]
    assert trigger(client, auth, "typed", {}).status_code == 422  # absent payload is {}
    ok = trigger(client, auth, "typed", {"payload": {"user": {"id": 1}, "email": "not an email"}})
    assert ok.status_code == 201  # format is annotation only
    many = trigger(client, auth, "typed", {"payload": {"user": {"id": 1}, "items": list(range(50))}})
    assert len(many.get_json()["errors"]["payload"]) == 20


def test_payload_non_finite_number_is_422(client, auth, job):
    response = trigger(client, auth, "hello", raw='{"payload": {"x": NaN}}')
    assert response.status_code == 422


def test_idempotency_header_and_body(client, auth, job, session):
    first = trigger(client, auth, "hello", {"idempotency_key": "a", "payload": {"n": 1}})
    assert first.status_code == 201
    again = trigger(client, auth, "hello", {"idempotency_key": "a", "payload": {"n": 2}})
    assert again.status_code == 200
    hit = again.get_json()
    assert hit["id"] == first.get_json()["id"] and hit["idempotency_hit"] is True
    assert hit["payload_hash"] == first.get_json()["payload_hash"]
    header = trigger(client, auth, "hello", {"idempotency_key": "zzz"}, headers={"Idempotency-Key": "a"})
    assert header.status_code == 200 and header.get_json()["id"] == hit["id"]
    bad = trigger(client, auth, "hello", {}, headers={"Idempotency-Key": "cron:x"})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.get_json()["errors"]


def test_idempotency_window_rules(client, auth, job, session):
    now = utcnow()
    make_run(session, job, status="completed", idempotency_key="old", now=now - timedelta(hours=25))
    make_run(session, job, status="expired", idempotency_key="exp", now=now)
    recent = make_run(session, job, status="failed", idempotency_key="recent", now=now - timedelta(hours=1))
    session.commit()
    assert trigger(client, auth, "hello", {"idempotency_key": "old"}).status_code == 201
    assert trigger(client, auth, "hello", {"idempotency_key": "exp"}).status_code == 201
    hit = trigger(client, auth, "hello", {"idempotency_key": "recent"})
    assert hit.status_code == 200 and hit.get_json()["id"] == recent.id and hit.get_json()["status"] == "failed"


def test_dedup_window(client, auth, session):
    make_job(session, slug="dd", dedup_window_secs=60)
    session.commit()
    first = trigger(client, auth, "dd", {"payload": {"a": 1, "b": 2}})
    same = trigger(client, auth, "dd", {"payload": {"b": 2, "a": 1}, "idempotency_key": "new-key"})
    assert first.status_code == 201 and same.status_code == 200
    assert same.get_json()["id"] == first.get_json()["id"] and same.get_json()["idempotency_hit"] is False
    other = trigger(client, auth, "dd", {"payload": {"a": 1}})
    assert other.status_code == 201


def test_dry_run(client, auth, job, session, redis_client):
    response = trigger(client, auth, "hello", {"dry_run": True, "delay_secs": 10, "ttl_secs": 5,
                                               "idempotency_key": "dry"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] is None and body["dry_run"] is True and body["status"] == "delayed"
    assert body["idempotency_hit"] is False and body["attempt"] == 0 and body["expires_at"] is not None
    assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 0
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 0


def test_dependency_gating_creates_waiting(client, auth, session, redis_client):
    up = make_job(session, slug="up")
    down = make_job(session, slug="down", run_ttl_secs=100)
    make_dependency(session, down, up)
    session.commit()
    body = trigger(client, auth, "down", {}).get_json()
    assert body["status"] == "waiting" and body["expires_at"] is None
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 0
    make_run(session, up, status="completed")
    session.commit()
    assert trigger(client, auth, "down", {}).get_json()["status"] == "queued"


def test_job_ttl_applies(client, auth, session):
    make_job(session, slug="ttl", run_ttl_secs=100)
    session.commit()
    body = trigger(client, auth, "ttl", {}).get_json()
    assert parse_ts(body["expires_at"]) - parse_ts(body["created_at"]) == timedelta(seconds=100)
    body = trigger(client, auth, "ttl", {"ttl_secs": 0}).get_json()
    assert parse_ts(body["expires_at"]) - parse_ts(body["created_at"]) == timedelta(seconds=100)


def test_unpaired_surrogates_are_422_and_pairs_fine(client, auth, job):
    for raw in ['{"payload": {"a": "\\ud800"}}', '{"tags": {"a": "\\udc00"}}', '{"idempotency_key": "\\uDBFFx"}']:
        assert trigger(client, auth, "hello", raw=raw).status_code == 422
    ok = trigger(client, auth, "hello", raw='{"payload": {"a": "\\ud83d\\ude00"}}')
    assert ok.status_code == 201 and ok.get_json()["payload"] == {"a": "\U0001F600"}


def test_uuid_ref_prefers_id_over_slug(client, auth, session):
    first = make_job(session, slug="first")
    make_job(session, slug=first.id)  # another job whose slug is the first job's id
    session.commit()
    assert trigger(client, auth, first.id, {}).get_json()["job_id"] == first.id
