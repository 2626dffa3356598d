"""Runs API (CONTRACT §7): lists and filters with keyset paging, get, events, cancel, replay."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from shared import redis_keys
from shared.clock import format_ts, utcnow
from shared.db.models import Run
from tests.factories import make_dependency, make_job, make_run

TERMINAL = ["completed", "failed", "timed_out", "crashed", "canceled", "expired", "system_failed"]


def post(client, auth, path, body=None):
    return client.post(path, data=json.dumps(body) if body is not None else "",
                       headers={**auth, "Content-Type": "application/json"})


def walk(client, auth, url, limit):
    """Follow X-Next-Cursor to the end; return every id seen and the number of pages."""
    ids, pages = [], 0
    cursor = None
    while True:
        sep = "&" if "?" in url else "?"
        page_url = f"{url}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(page_url, headers=auth)
        assert response.status_code == 200, response.get_json()
        ids += [r["id"] for r in response.get_json()]
        pages += 1
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in response.headers
            return ids, pages
        assert 'rel="next"' in response.headers["Link"] and f"limit={min(limit, 200)}" in response.headers["Link"]


@pytest.fixture()
def world(session):
    """Two jobs of proj-a and one of proj-b, with runs spread over statuses, triggers, tags and time."""
    now = utcnow()
    a = make_job(session, slug="a")
    b = make_job(session, slug="b")
    other = make_job(session, "proj-b", slug="a")
    runs = []
    statuses = ["queued", "delayed", "waiting", "executing", *TERMINAL]
    for i in range(45):
        job = a if i % 3 else b
        runs.append(make_run(session, job, status=statuses[i % len(statuses)],
                             now=now - timedelta(seconds=100 - i // 2),  # pairs share a created_at
                             triggered_by=["manual", "cron", "replay"][i % 3],
                             tags={"team": "x" if i % 2 else "y", **({"only": "1"} if i % 5 == 0 else {})},
                             batch_id="0190f3c2-0000-7000-8000-000000000001" if i < 10 else None))
    make_run(session, other, status="failed")
    session.commit()
    return {"a": a, "b": b, "runs": runs, "now": now}


def expected(world, predicate):
    chosen = [r for r in world["runs"] if predicate(r)]
    return [r.id for r in sorted(chosen, key=lambda r: (r.created_at, r.id), reverse=True)]


def test_pagination_no_gaps_no_repeats(client, auth, world):
    for limit in (1, 7, 50, 500):
        ids, pages = walk(client, auth, "/v1/runs", limit)
        assert ids == expected(world, lambda r: True)
        assert len(set(ids)) == 45
        assert pages == -(-45 // limit) if limit < 45 else pages == 1


@pytest.mark.parametrize("query, predicate", [
    ("status=failed,crashed", lambda r: r.status in ("failed", "crashed")),
    ("triggered_by=cron", lambda r: r.triggered_by == "cron"),
    ("batch_id=0190f3c2-0000-7000-8000-000000000001", lambda r: r.batch_id is not None),
    ("tag_key=only", lambda r: "only" in r.tags),
    ("tag_key=team&tag_value=x", lambda r: r.tags.get("team") == "x"),
    ("status=queued&triggered_by=manual", lambda r: r.status == "queued" and r.triggered_by == "manual"),
    ("project_id=proj-a", lambda r: True),
])
def test_filters(client, auth, world, query, predicate):
    ids, _ = walk(client, auth, f"/v1/runs?{query}", 4)
    assert ids == expected(world, predicate)


def test_job_id_filter_by_id_and_unknown(client, auth, world):
    ids, _ = walk(client, auth, f"/v1/runs?job_id={world['a'].id}", 10)
    assert ids == expected(world, lambda r: r.job_id == world["a"].id)
    ids, _ = walk(client, auth, "/v1/runs?job_id=b", 4)
    assert ids == expected(world, lambda r: r.job_id == world["b"].id)
    assert client.get("/v1/runs?job_id=nope", headers=auth).get_json() == []


def test_created_range(client, auth, world):
    runs = sorted(world["runs"], key=lambda r: r.created_at)
    lo, hi = runs[10].created_at, runs[30].created_at
    ids, _ = walk(client, auth, f"/v1/runs?created_after={format_ts(lo)}"
                                f"&created_before={format_ts(hi)}", 3)
    assert ids == expected(world, lambda r: lo <= r.created_at < hi)


@pytest.mark.parametrize("query, field", [
    ("status=bogus", "status"), ("status=", "status"), ("triggered_by=api", "triggered_by"),
    ("tag_value=x", "tag_value"), ("created_after=yesterday", "created_after"),
    ("created_before=2024-01-01T00:00:00", "created_before"), ("limit=0", "limit"), ("limit=abc", "limit"),
    ("created_after=20250301T090000Z", "created_after"), ("created_after=2025-W09-6T09:00:00Z", "created_after"),
    ("created_before=2025-03-01T09:00Z", "created_before"),
])
def test_filter_errors(client, auth, world, query, field):
    response = client.get(f"/v1/runs?{query}", headers=auth)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]


def test_project_and_cursor_errors(client, auth, world):
    assert client.get("/v1/runs?project_id=proj-b", headers=auth).status_code == 403
    assert client.get("/v1/runs?cursor=garbage", headers=auth).status_code == 400
    first = client.get("/v1/runs?limit=2", headers=auth)
    cursor = first.headers["X-Next-Cursor"]
    assert client.get(f"/v1/runs/dlq?cursor={cursor}", headers=auth).status_code == 400
    assert client.get(f"/v1/jobs/a/runs?cursor={cursor}", headers=auth).status_code == 400
    assert client.get("/v1/runs?limit=1000", headers=auth).status_code == 200


def test_other_project_sees_only_its_runs(client, other_auth, world):
    body = client.get("/v1/runs", headers=other_auth).get_json()
    assert len(body) == 1 and body[0]["project_id"] == "proj-b"
    assert client.get(f"/v1/runs/{world['runs'][0].id}", headers=other_auth).status_code == 404
    assert client.get("/v1/jobs/b/runs", headers=other_auth).status_code == 404


def test_job_runs_route(client, auth, world):
    ids, _ = walk(client, auth, "/v1/jobs/a/runs?status=queued,failed", 2)
    assert ids == expected(world, lambda r: r.job_id == world["a"].id and r.status in ("queued", "failed"))
    assert client.get("/v1/jobs/zzz/runs", headers=auth).status_code == 404


def test_dlq(client, auth, world):
    ids, _ = walk(client, auth, "/v1/runs/dlq", 5)
    assert ids == expected(world, lambda r: r.status in ("failed", "timed_out", "crashed", "system_failed"))
    ids, _ = walk(client, auth, "/v1/runs/dlq?status=crashed", 5)
    assert ids == expected(world, lambda r: r.status == "crashed")
    assert client.get("/v1/runs/dlq?status=completed", headers=auth).status_code == 422
    assert client.delete("/v1/runs/dlq", headers=auth).status_code == 405
    assert client.get("/v1/runs/bulk-cancel", headers=auth).status_code == 405


def test_get_and_events(client, auth, world, session):
    run = world["runs"][0]
    body = client.get(f"/v1/runs/{run.id}", headers=auth).get_json()
    assert body["id"] == run.id and body["parent_run_id"] is None
    assert client.get("/v1/runs/not-a-uuid", headers=auth).status_code == 404
    assert client.get("/v1/runs/0190f3c2-0000-7000-8000-00000000ffff", headers=auth).status_code == 404
    job = world["a"]
    created = post(client, auth, f"/v1/jobs/{job.id}/trigger", {}).get_json()
    post(client, auth, f"/v1/runs/{created['id']}/cancel")
    events = client.get(f"/v1/runs/{created['id']}/events", headers=auth).get_json()
    assert [e["data"] for e in events] == [{"from": "queued", "to": "canceled"}, {"from": None, "to": "queued"}]
    assert set(events[0]) == {"id", "run_id", "type", "message", "data", "created_at"}
    first = client.get(f"/v1/runs/{created['id']}/events?limit=1", headers=auth)
    second = client.get(f"/v1/runs/{created['id']}/events?limit=1&cursor={first.headers['X-Next-Cursor']}",
                        headers=auth)
    assert [e["id"] for e in first.get_json() + second.get_json()] == [e["id"] for e in events]
    assert "X-Next-Cursor" not in second.headers


@pytest.mark.parametrize("status", ["waiting", "delayed", "queued", "executing"])
def test_cancel_active(client, auth, session, redis_client, status):
    job = make_job(session, slug="c", webhook_url="http://127.0.0.1:9/hook")
    extra: dict[str, Any] = {"attempt": 1, "started_at": utcnow()} if status == "executing" else {}
    run = make_run(session, job, status=status, concurrency_key="k", **extra)
    session.commit()
    redis_client.zadd(redis_keys.concurrency_job(job.id), {run.id: 1e15})
    response = post(client, auth, f"/v1/runs/{run.id}/cancel")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "canceled" and body["error"] == "canceled" and body["error_class"] is None
    assert body["finished_at"] is not None
    flagged = redis_client.get(redis_keys.run_cancel(run.id))
    assert (flagged is not None) == (status == "executing")
    if status == "executing":
        assert 0 < redis_client.ttl(redis_keys.run_cancel(run.id)) <= 86400
        assert redis_client.zscore(redis_keys.concurrency_job(job.id), run.id) is None
    again = post(client, auth, f"/v1/runs/{run.id}/cancel")
    assert again.status_code == 409 and again.get_json()["message"] == "run is already canceled"


@pytest.mark.parametrize("status", TERMINAL)
def test_cancel_terminal_is_409(client, auth, session, status):
    run = make_run(session, make_job(session), status=status)
    session.commit()
    response = client.delete(f"/v1/runs/{run.id}", headers=auth)
    assert response.status_code == 409 and response.get_json()["message"] == f"run is already {status}"


def test_cancel_releases_dependents(client, auth, session):
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up, condition="any")
    waiting = make_run(session, down, status="waiting")
    upstream = make_run(session, up, status="queued")
    session.commit()
    assert client.delete(f"/v1/runs/{upstream.id}", headers=auth).status_code == 200
    session.expire_all()
    assert session.get(Run, waiting.id).status == "queued"


def test_bulk_cancel(client, auth, other_auth, session):
    job = make_job(session)
    queued = make_run(session, job, status="queued")
    done = make_run(session, job, status="completed")
    session.commit()
    ids = [queued.id, done.id, "nope", queued.id]
    body = post(client, auth, "/v1/runs/bulk-cancel", {"run_ids": ids}).get_json()
    assert body == {"results": [
        {"id": queued.id, "status": "canceled", "error": None},
        {"id": done.id, "status": "completed", "error": "already completed"},
        {"id": "nope", "status": None, "error": "not found"},
        {"id": queued.id, "status": "canceled", "error": "already canceled"},
    ], "total": 4, "canceled": 1, "failed": 3}
    assert post(client, auth, "/v1/runs/bulk-cancel", {"run_ids": []}).status_code == 422
    assert post(client, auth, "/v1/runs/bulk-cancel", {"run_ids": ["x"] * 101}).status_code == 422
    assert post(client, auth, "/v1/runs/bulk-cancel", {"run_ids": [1]}).status_code == 422
    foreign = post(client, other_auth, "/v1/runs/bulk-cancel", {"run_ids": [done.id]}).get_json()
    assert foreign["results"][0]["error"] == "not found"


def test_replay(client, auth, session, redis_client):
    job = make_job(session, slug="r", run_ttl_secs=50)
    original = make_run(session, job, status="failed", payload='{"a":1}', run_metadata={"m": "1"},
                        tags={"t": "1"}, priority=5, concurrency_key="ck", debug_mode=True,
                        max_attempts_override=2, timeout_secs_override=3, idempotency_key="k",
                        batch_id="0190f3c2-0000-7000-8000-000000000001", lineage_depth=2,
                        scheduled_at=utcnow())
    job.version = 2
    job.version_id = "ver_000000000002"
    session.commit()
    response = post(client, auth, f"/v1/runs/{original.id}/replay")
    assert response.status_code == 201, response.get_json()
    new = response.get_json()
    assert response.headers["Location"] == f"/v1/runs/{new['id']}"
    assert new["status"] == "queued" and new["triggered_by"] == "replay"
    assert new["payload"] == {"a": 1} and new["metadata"] == {"m": "1"} and new["tags"] == {"t": "1"}
    assert new["priority"] == 5 and new["concurrency_key"] == "ck" and new["debug_mode"] is True
    assert new["max_attempts_override"] == 2 and new["timeout_secs_override"] == 3
    assert new["continuation_of"] == original.id and new["lineage_depth"] == 3
    assert new["idempotency_key"] is None and new["batch_id"] is None and new["scheduled_at"] is None
    assert new["job_version"] == 2 and new["job_version_id"] == "ver_000000000002"
    assert new["created_by"].startswith("apikey:") and new["expires_at"] is not None
    session.expire_all()
    assert session.get(Run, original.id).status == "failed"
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 1


def test_replay_rules(client, auth, session):
    job = make_job(session)
    active = make_run(session, job, status="executing")
    off = make_job(session, enabled=False)
    off_run = make_run(session, off, status="completed")
    session.commit()
    assert post(client, auth, f"/v1/runs/{active.id}/replay").status_code == 409
    assert post(client, auth, f"/v1/runs/{off_run.id}/replay").status_code == 409
    assert post(client, auth, "/v1/runs/0190f3c2-0000-7000-8000-00000000ffff/replay").status_code == 404


def test_replay_gated_by_dependencies(client, auth, session):
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up)
    original = make_run(session, down, status="completed")
    session.commit()
    assert post(client, auth, f"/v1/runs/{original.id}/replay").get_json()["status"] == "waiting"


def test_bulk_replay(client, auth, session):
    job = make_job(session)
    done = make_run(session, job, status="completed")
    active = make_run(session, job, status="queued")
    session.commit()
    body = post(client, auth, "/v1/runs/bulk-replay", {"run_ids": [done.id, active.id, "missing"]}).get_json()
    assert body["total"] == 3 and body["replayed"] == 1
    results = body["results"]
    assert results[0]["status"] == "replayed" and results[0]["new_run_id"] and results[0]["error"] is None
    assert results[1] == {"original_run_id": active.id, "new_run_id": None, "status": "skipped",
                          "error": "run is queued; only terminal runs can be replayed"}
    assert results[2]["status"] == "not_found" and results[2]["new_run_id"] is None


def test_job_runs_precedence(client, auth, world):
    assert client.get("/v1/jobs/zzz/runs?status=bogus", headers=auth).status_code == 422
    assert client.get("/v1/jobs/zzz/runs?project_id=proj-b", headers=auth).status_code == 403
    assert client.get("/v1/jobs/zzz/runs?cursor=garbage", headers=auth).status_code == 404
