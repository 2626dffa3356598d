"""Triggering against a live HTTP server: concurrent duplicates (§4.5) and the Strait SDK (strait-python)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from shared.clock import utcnow
from shared.db.models import Run
from shared.runs.effects import Effects
from shared.runs.moves import move, release_dependents
from shared.runs.status import RunStatus
from tests.factories import make_dependency, make_job, make_run
from tests.integration.process_support import served

CONCURRENCY = 20


@pytest.fixture()
def base_url(app) -> Iterator[str]:
    with served(app) as url:
        yield url


def fire_together(url: str, headers: dict[str, str], body: dict, n: int = CONCURRENCY) -> list[httpx.Response]:
    barrier = threading.Barrier(n)
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            response = http.post(url, json=body, headers=headers)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return responses


def runs_of(session, job_id):
    session.expire_all()
    return session.scalars(sa.select(Run).where(Run.job_id == job_id)).all()


def test_concurrent_idempotency_creates_one_run(base_url, auth, session, redis_client):
    job = make_job(session, slug="idem")
    session.commit()
    responses = fire_together(f"{base_url}/v1/jobs/idem/trigger", {**auth, "Idempotency-Key": "same"},
                              {"payload": {"x": 1}})
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * (CONCURRENCY - 1) + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.json()["idempotency_hit"] for r in responses) == CONCURRENCY - 1
    assert len(runs_of(session, job.id)) == 1
    assert redis_client.hlen("dramatiq:sluice.runs.msgs") == 1


def test_concurrent_dedup_creates_one_run(base_url, auth, session, redis_client):
    job = make_job(session, slug="dedup", dedup_window_secs=60)
    session.commit()
    responses = fire_together(f"{base_url}/v1/jobs/dedup/trigger", auth, {"payload": {"same": True}})
    assert sorted(r.status_code for r in responses) == [200] * (CONCURRENCY - 1) + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    assert not any(r.json()["idempotency_hit"] for r in responses)
    assert len(runs_of(session, job.id)) == 1


def test_concurrent_bulk_with_shared_keys_creates_one_run_per_key(base_url, auth, session):
    job = make_job(session, slug="bk")
    session.commit()
    items = [{"idempotency_key": f"k{i}"} for i in range(50)]
    responses = fire_together(f"{base_url}/v1/jobs/bk/trigger/bulk", auth, {"items": items}, n=8)
    assert all(r.status_code == 201 for r in responses)
    assert sum(r.json()["created"] for r in responses) == 50
    assert len(runs_of(session, job.id)) == 50


def test_no_lost_wakeup_when_upstream_finishes_during_creation(base_url, auth, session_factory, session):
    """Upstream runs finish while dependent runs are being triggered: none may stay waiting."""
    PAIRS = 10  # 2 connections per pair: the database server is shared with other suites
    up = make_job(session, slug="up")
    down = make_job(session, slug="down")
    make_dependency(session, down, up)
    upstream = [make_run(session, up, status="executing", attempt=1, started_at=utcnow(), idempotency_key=f"k{i}")
                for i in range(PAIRS)]
    session.commit()

    def finish(run_id: str) -> None:
        with session_factory() as s:
            move(s, run_id, RunStatus.COMPLETED, now=utcnow(), effects=Effects())
            s.commit()

    barrier = threading.Barrier(2 * PAIRS)

    def trigger(i: int) -> None:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            http.post(f"{base_url}/v1/jobs/down/trigger", json={"idempotency_key": f"k{i}"}, headers=auth)

    def complete(i: int) -> None:
        barrier.wait()
        finish(upstream[i].id)

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(PAIRS)]
    threads += [threading.Thread(target=complete, args=(i,)) for i in range(PAIRS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [r.status for r in runs_of(session, down.id)]
    assert len(statuses) == PAIRS and set(statuses) == {"queued"}
    assert release_dependents(session, up.id, now=utcnow(), effects=Effects()) == 0


def test_strait_sdk_trigger_and_bulk(base_url, auth, session):
    from strait import Client

    job = make_job(session, slug="sdk")
    session.commit()
    token = auth["Authorization"].removeprefix("Bearer ")
    client = Client(base_url=base_url, bearer_token=token)
    run = client.jobs.trigger(job.id, {"payload": {"order": 7}, "idempotency_key": "sdk-1",
                                       "metadata": {"source": "sdk"}})
    assert run["status"] == "queued" and run["payload"] == {"order": 7} and run["idempotency_hit"] is False
    again = client.jobs.trigger("sdk", {"payload": {}, "idempotency_key": "sdk-1"})
    assert again["id"] == run["id"] and again["idempotency_hit"] is True
    bulk = client.jobs.bulk_trigger(job.id, {"items": [{"payload": {"n": i}} for i in range(5)]})
    assert bulk["total"] == 5 and bulk["created"] == 5 and len(bulk["results"]) == 5
    from strait._errors import ApiError, ConflictError, NotFoundError

    with pytest.raises(NotFoundError):
        client.jobs.trigger("missing", {})
    with pytest.raises(ApiError) as invalid:
        client.jobs.trigger("sdk", {"priority": 50})
    assert invalid.value.status == 422 and "priority" in invalid.value.body["errors"]
    job.enabled = False
    session.commit()
    with pytest.raises(ConflictError) as info:
        client.jobs.bulk_trigger("sdk", {"items": [{}]})
    assert "disabled" in str(info.value)
