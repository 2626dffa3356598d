"""POST /v1/jobs/{job}/trigger/bulk (CONTRACT §4.4)."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from shared.db.models import Batch, Run, RunEvent
from tests.factories import make_dependency, make_job, make_run


def bulk(client, auth, ref, items):
    return client.post(f"/v1/jobs/{ref}/trigger/bulk", data=json.dumps({"items": items}),
                       headers={**auth, "Content-Type": "application/json"})


def count(session, model):
    return session.scalar(sa.select(sa.func.count()).select_from(model))


def test_thousand_items_one_batch(client, auth, session, redis_client):
    make_job(session, slug="b")
    session.commit()
    items = [{"payload": {"i": i}, "priority": i % 11} for i in range(1000)]
    started = time.perf_counter()
    response = bulk(client, auth, "b", items)
    elapsed = time.perf_counter() - started
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["total"] == 1000 and body["created"] == 1000 and len(body["results"]) == 1000
    assert set(body["results"][0]) == {"id", "status", "run_token", "idempotency_hit"}
    assert all(r["status"] == "queued" and r["run_token"] is None for r in body["results"])
    assert count(session, Run) == 1000 and count(session, RunEvent) == 1000
    batch = session.get(Batch, body["batch_id"])
    assert batch.total == 1000 and batch.created == 1000
    assert session.scalar(sa.select(sa.func.count()).where(Run.batch_id == body["batch_id"])) == 1000
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 1000
    assert redis_client.llen("dramatiq:sluice.runs") == 1000
    first = session.get(Run, body["results"][7]["id"])
    assert json.loads(first.payload) == {"i": 7} and first.priority == 7
    assert elapsed < 3.0  # generous for CI; the benchmark measures the real figure


def test_all_or_nothing(client, auth, session):
    make_job(session, slug="s", payload_schema={"type": "object", "required": ["id"]})
    session.commit()
    items = [{"payload": {"id": 1}}] * 7 + [{"payload": {}}, {"priority": "x"}, 5, {"dry_run": False}]
    response = bulk(client, auth, "s", items)
    assert response.status_code == 422
    errors = response.get_json()["errors"]["items"]
    assert errors["7"] == {"payload": ["$.id: 'id' is a required property"]}
    assert "priority" in errors["8"] and "_schema" in errors["9"] and "dry_run" in errors["10"]
    assert count(session, Run) == 0 and count(session, Batch) == 0


def test_item_count_and_order_of_checks(client, auth, session):
    make_job(session, slug="off", enabled=False)
    session.commit()
    assert bulk(client, auth, "off", []).status_code == 422
    assert bulk(client, auth, "off", [{}] * 1001).status_code == 422
    assert bulk(client, auth, "nope", [{"priority": 99}]).status_code == 404
    assert bulk(client, auth, "off", [{"priority": 99}]).status_code == 409
    response = client.post("/v1/jobs/off/trigger/bulk", data="[]", headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 422


def test_idempotency_and_dedup_inside_and_across(client, auth, session, redis_client):
    job = make_job(session, slug="d", dedup_window_secs=300)
    old = make_run(session, job, status="completed", idempotency_key="k0", batch_id=None)
    session.commit()
    items = [{"idempotency_key": "k0"}, {"idempotency_key": "k1", "payload": {"a": 1}},
             {"idempotency_key": "k1", "payload": {"a": 2}}, {"payload": {"a": 1}}, {"payload": {"a": 3}},
             {"idempotency_key": "k2", "payload": {"a": 3}}]
    response = bulk(client, auth, "d", items)
    assert response.status_code == 201
    results = response.get_json()["results"]
    assert results[0] == {"id": old.id, "status": "completed", "run_token": None, "idempotency_hit": True}
    assert results[2]["id"] == results[1]["id"] and results[2]["idempotency_hit"] is True
    assert results[3]["id"] == results[1]["id"] and results[3]["idempotency_hit"] is False
    assert results[5]["id"] == results[4]["id"] and results[5]["idempotency_hit"] is False
    assert response.get_json()["created"] == 2 and response.get_json()["total"] == 6
    assert session.get(Run, old.id).batch_id is None
    again = bulk(client, auth, "d", [{"idempotency_key": "k1"}]).get_json()
    assert again["created"] == 0 and again["results"][0]["id"] == results[1]["id"]
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 2


def test_dependencies_and_delays(client, auth, session, redis_client):
    up = make_job(session, slug="up")
    down = make_job(session, slug="down")
    make_dependency(session, down, up)
    make_run(session, up, status="completed", idempotency_key="ok")
    session.commit()
    results = bulk(client, auth, "down", [{"idempotency_key": "ok"}, {"idempotency_key": "no"},
                                          {"idempotency_key": "ok2", "delay_secs": 100}]).get_json()["results"]
    assert [r["status"] for r in results] == ["queued", "waiting", "waiting"]
    results = bulk(client, auth, "up", [{"delay_secs": 100}, {}]).get_json()["results"]
    assert [r["status"] for r in results] == ["delayed", "queued"]
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 2


def test_header_key_ignored(client, auth, session):
    make_job(session, slug="h")
    session.commit()
    headers = {**auth, "Content-Type": "application/json", "Idempotency-Key": "cron:bad"}
    response = client.post("/v1/jobs/h/trigger/bulk", data=json.dumps({"items": [{}, {}]}), headers=headers)
    assert response.status_code == 201 and response.get_json()["created"] == 2
