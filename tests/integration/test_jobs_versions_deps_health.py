"""Versions (§3.7), dependency edges (§3.9) and health (§8) endpoints."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from shared.clock import utcnow
from shared.db.models import Job, JobDependency, Run
from tests.factories import make_run
from tests.integration.jobs_support import SECRET, assert_error, create

VERSION_SEED_FIELDS = {"id", "job_id", "version", "name", "slug", "description", "cron", "payload_schema", "tags",
                       "endpoint_url", "fallback_endpoint_url", "max_attempts", "timeout_secs", "webhook_url",
                       "webhook_secret", "run_ttl_secs", "created_at", "version_id", "created_by"}


def test_versions_list_and_get(client, auth, other_auth):
    job = create(client, auth, "v", webhook_secret=SECRET)
    for i in range(4):
        client.patch("/v1/jobs/v", json={"max_attempts": i + 4}, headers=auth)
    versions = client.get("/v1/jobs/v/versions", headers=auth).json
    assert [v["version"] for v in versions] == [5, 4, 3, 2, 1]
    current = client.get("/v1/jobs/v", headers=auth).json
    assert versions[0]["id"] == versions[0]["version_id"] == current["version_id"]
    assert set(versions[0]) >= VERSION_SEED_FIELDS and "version_policy" in versions[0]
    assert versions[0]["webhook_secret"] == "whsec_…XY9Q" and versions[0]["max_attempts"] == 7
    assert versions[-1]["max_attempts"] == 3 and versions[-1]["id"] == job["version_id"]
    one = client.get(f"/v1/jobs/v/versions/{job['version_id']}", headers=auth)
    assert one.status_code == 200 and one.json == versions[-1]
    # pagination by version
    page = client.get("/v1/jobs/v/versions?limit=2", headers=auth)
    assert [v["version"] for v in page.json] == [5, 4]
    nxt = client.get(f"/v1/jobs/v/versions?limit=2&cursor={page.headers['X-Next-Cursor']}", headers=auth)
    assert [v["version"] for v in nxt.json] == [3, 2]
    assert_error(client.get("/v1/jobs/v/versions?cursor=bad!", headers=auth), 400)
    assert_error(client.get("/v1/jobs/v/versions?limit=0", headers=auth), 422)
    # 404s: unknown job, unknown version, version of another job, another project
    other = create(client, auth, "other")
    assert_error(client.get(f"/v1/jobs/v/versions/{other['version_id']}", headers=auth), 404)
    assert_error(client.get("/v1/jobs/v/versions/ver_000000000000", headers=auth), 404)
    assert_error(client.get("/v1/jobs/nope/versions", headers=auth), 404)
    assert_error(client.get("/v1/jobs/v/versions", headers=other_auth), 404)
    assert_error(client.get(f"/v1/jobs/v/versions/{job['version_id']}", headers=other_auth), 404)


def test_dependency_lifecycle(client, auth, session):
    a, b = create(client, auth, "a"), create(client, auth, "b")
    response = client.post("/v1/jobs/a/dependencies", json={"depends_on_job_id": "b"}, headers=auth)
    assert response.status_code == 201
    edge = response.json
    assert set(edge) == {"id", "job_id", "depends_on_job_id", "condition", "created_at"}
    assert edge["job_id"] == a["id"] and edge["depends_on_job_id"] == b["id"] and edge["condition"] == "completed"
    listed = client.get("/v1/jobs/a/dependencies", headers=auth).json
    assert listed == [edge]
    assert client.get("/v1/jobs/b/dependencies", headers=auth).json == []
    assert_error(client.delete(f"/v1/jobs/b/dependencies/{edge['id']}", headers=auth), 404)
    assert client.delete(f"/v1/jobs/a/dependencies/{edge['id']}", headers=auth).status_code == 204
    assert_error(client.delete(f"/v1/jobs/a/dependencies/{edge['id']}", headers=auth), 404)
    assert_error(client.delete("/v1/jobs/a/dependencies/not-a-uuid", headers=auth), 404)


def test_dependency_errors(client, auth, other_auth):
    create(client, auth, "a")
    b = create(client, auth, "b")
    create(client, auth, "c")
    foreign = create(client, other_auth, "f")
    post = lambda ref, body: client.post(f"/v1/jobs/{ref}/dependencies", json=body, headers=auth)  # noqa: E731
    assert_error(post("a", {}), 422)
    assert_error(post("a", {"depends_on_job_id": "b", "condition": "maybe"}), 422)
    assert_error(post("a", {"depends_on_job_id": 5}), 422)
    assert_error(post("a", {"depends_on_job_id": "missing"}), 400, "depends_on_job_id: job not found")
    assert_error(post("a", {"depends_on_job_id": foreign["id"]}), 400, "depends_on_job_id: job not found")
    assert_error(post("a", {"depends_on_job_id": "f"}), 400, "depends_on_job_id: job not found")
    assert_error(post("a", {"depends_on_job_id": "a"}), 400, "depends_on_job_id: a job cannot depend on itself")
    assert_error(post("nope", {"depends_on_job_id": "b"}), 404)
    assert post("a", {"depends_on_job_id": b["id"], "condition": "any"}).status_code == 201
    assert_error(post("a", {"depends_on_job_id": "b", "condition": "failed"}), 409)
    assert post("b", {"depends_on_job_id": "c"}).status_code == 201
    assert_error(post("c", {"depends_on_job_id": "a"}), 409, 'dependency on "a" would create a cycle')
    assert_error(client.get("/v1/jobs/a/dependencies", headers=other_auth), 404)


def test_concurrent_edges_cannot_form_a_cycle(client, auth, app, session):
    create(client, auth, "x")
    create(client, auth, "y")
    results = []

    def add(src: str, dst: str) -> None:
        with app.test_client() as c:
            results.append(c.post(f"/v1/jobs/{src}/dependencies", json={"depends_on_job_id": dst},
                                  headers=auth).status_code)

    for _ in range(5):
        session.execute(sa.delete(JobDependency))
        session.commit()
        results.clear()
        threads = [threading.Thread(target=add, args=("x", "y")), threading.Thread(target=add, args=("y", "x"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [201, 409]


def test_deleting_an_edge_releases_waiting_runs(client, auth, session):
    create(client, auth, "up")
    down = create(client, auth, "down")
    edge = client.post("/v1/jobs/down/dependencies", json={"depends_on_job_id": "up"}, headers=auth).json
    waiting = make_run(session, session.get(Job, down["id"]), status="waiting")
    session.commit()
    assert client.delete(f"/v1/jobs/down/dependencies/{edge['id']}", headers=auth).status_code == 204
    session.expire_all()
    assert session.get(Run, waiting.id).status == "queued"


def test_dependency_pagination(client, auth):
    create(client, auth, "hub")
    for i in range(5):
        create(client, auth, f"u{i}")
        client.post("/v1/jobs/hub/dependencies", json={"depends_on_job_id": f"u{i}"}, headers=auth)
    page = client.get("/v1/jobs/hub/dependencies?limit=3", headers=auth)
    rest = client.get(f"/v1/jobs/hub/dependencies?cursor={page.headers['X-Next-Cursor']}", headers=auth)
    ids = [e["id"] for e in page.json + rest.json]
    assert len(ids) == len(set(ids)) == 5 and "X-Next-Cursor" not in rest.headers


def test_health(client, auth, session, other_auth):
    job = create(client, auth, "h")
    orm_job = session.get(Job, job["id"])
    now = utcnow()
    durations = [1, 2, 3, 4, 10]
    for secs in durations:
        make_run(session, orm_job, status="completed", started_at=now - timedelta(seconds=secs + 60),
                 finished_at=now - timedelta(seconds=60))
    make_run(session, orm_job, status="failed", started_at=now - timedelta(seconds=62),
             finished_at=now - timedelta(seconds=60))
    make_run(session, orm_job, status="system_failed", finished_at=now - timedelta(seconds=30))
    make_run(session, orm_job, status="canceled", finished_at=now - timedelta(seconds=30))
    make_run(session, orm_job, status="completed", finished_at=now - timedelta(days=3))  # outside 1d
    make_run(session, orm_job, status="executing")  # not terminal
    session.commit()
    body = client.get("/v1/jobs/h/health?window=1d", headers=auth).json
    all_durations = sorted([*durations, 2])
    avg = sum(all_durations) / len(all_durations)
    pos = 0.95 * (len(all_durations) - 1)
    p95 = all_durations[int(pos)] + (all_durations[int(pos) + 1] - all_durations[int(pos)]) * (pos - int(pos))
    success = 100 * 5 / 8
    stability = 30 if p95 <= 2 * avg else 30 * (2 * avg / p95)
    assert body["total_runs"] == 8 and body["completed_runs"] == 5 and body["failed_runs"] == 1
    assert body["crashed_runs"] == 1 and body["canceled_runs"] == 1 and body["expired_runs"] == 0
    assert body["timed_out_runs"] == 0 and body["window"] == "1d" and body["job_id"] == job["id"]
    assert body["success_rate"] == round(success, 2)
    assert body["avg_duration_secs"] == pytest.approx(round(avg, 2), abs=0.011)
    assert body["p95_duration_secs"] == pytest.approx(round(p95, 2), abs=0.011)
    assert body["health_score"] == pytest.approx(round(min(100, 0.7 * success + stability), 2), abs=0.011)
    week = client.get("/v1/jobs/h/health", headers=auth).json
    assert week["window"] == "7d" and week["total_runs"] == 9


def test_health_empty_and_errors(client, auth, other_auth):
    create(client, auth, "empty")
    body = client.get("/v1/jobs/empty/health?window=1h", headers=auth).json
    assert body["total_runs"] == 0 and body["health_score"] == -1 and body["success_rate"] == 0
    assert body["avg_duration_secs"] == 0 and body["p95_duration_secs"] == 0
    assert_error(client.get("/v1/jobs/empty/health?window=2d", headers=auth), 400,
                 "window: must be one of 1h, 1d, 7d, 30d")
    assert_error(client.get("/v1/jobs/nope/health?window=2d", headers=auth), 404)  # 404 before 400
    assert_error(client.get("/v1/jobs/empty/health", headers=other_auth), 404)


@pytest.mark.parametrize("path", ["versions", "dependencies"])
def test_an_unknown_job_is_404_before_a_bad_cursor_is_400(client, auth, other_auth, path):
    """Precedence: the lookup's 404 comes before the cursor's 400 (and the cursor is then checked)."""
    create(client, auth, "known")
    assert_error(client.get(f"/v1/jobs/missing/{path}?cursor=bad!", headers=auth), 404, "job not found")
    assert_error(client.get(f"/v1/jobs/known/{path}?cursor=bad!", headers=other_auth), 404, "job not found")
    assert_error(client.get(f"/v1/jobs/known/{path}?cursor=bad!", headers=auth), 400)
