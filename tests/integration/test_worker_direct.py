"""The attempt hot path as single-statement transactions (worker.direct, worker.fast_start,
shared.runs.attempts.record_end_alone): same rows and events as the checked path, and the checked path still
decides whenever a check could refuse or a terminal hook is due."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from shared import redis_keys
from shared.clock import utcnow
from shared.limits.thread_scripts import ThreadScripts
from tests.integration.runner_harness import Harness, harness_fixture  # noqa: F401  (fixture)
from worker.direct import _autocommit_off
from worker.fast_start import CLAIM_AND_START
from worker.leases import LeaseWriter


def test_plain_run_starts_and_ends_in_one_statement_each(harness: Harness, httpserver: HTTPServer) -> None:
    in_use: list[int] = []

    def answer(request: Request) -> Response:
        in_use.append(harness.limits.slots_in_use(job.id))  # the lease exists during the call
        return Response('{"ok": 1}', content_type="application/json")

    httpserver.expect_request("/plain").respond_with_handler(answer)
    job = harness.job(endpoint_url=httpserver.url_for("/plain"))
    run = harness.run(job)
    assert harness.handle(run.id).action == "completed"
    got = harness.get(run.id)
    assert (got.status, got.attempt, got.result, got.error, got.due_at) == ("completed", 1, {"ok": 1}, None, None)
    assert got.started_at is not None and got.heartbeat_at == got.started_at and got.finished_at is not None
    assert got.execution_trace is not None and got.execution_trace["total_ms"] is not None
    events = harness.events(run.id)
    assert [(e.type, e.data) for e in events[:2]] == [
        ("state_change", {"from": "queued", "to": "executing"}),
        ("attempt_started", {"attempt": 1, "job_version": job.version, "endpoint_url": job.endpoint_url}),
    ]
    assert [e.type for e in events[2:]] == ["state_change", "attempt_finished"]
    assert events[2].data == {"from": "executing", "to": "completed"}
    assert in_use == [1]
    harness.monitor.flush_releases()  # a terminal run's lease goes at the monitor's next poll (worker.heartbeat)
    assert harness.limits.slots_in_use(job.id) == 0
    assert harness.runner._direct is not None
    assert CLAIM_AND_START.name in harness.runner._direct._local.held.prepared


def test_retry_releases_its_lease_at_once(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/retry").respond_with_data("busy", status=503)
    job = harness.job(endpoint_url=httpserver.url_for("/retry"), max_attempts=3)
    run = harness.run(job)
    assert harness.handle(run.id).action == "delayed"
    assert harness.limits.slots_in_use(job.id) == 0  # a retry may take a lease again soon: not deferred


def test_userinfo_is_stripped_from_the_attempt_started_event(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/u").respond_with_data("ok")
    url = httpserver.url_for("/u").replace("http://", "http://user:secret@")
    run = harness.run(harness.job(endpoint_url=url))
    assert harness.handle(run.id).action == "completed"
    started = harness.events(run.id, "attempt_started")[0].data
    assert started["endpoint_url"] == httpserver.url_for("/u")


def test_a_better_run_of_a_limited_job_is_claimed_first(harness: Harness, httpserver: HTTPServer) -> None:
    """The one-statement start never skips a better run it cannot start: the checked path takes over."""
    httpserver.expect_request("/l").respond_with_data("ok")
    limited = harness.job(endpoint_url=httpserver.url_for("/l"), max_concurrency=5)
    plain = harness.job(endpoint_url=httpserver.url_for("/l"))
    base = utcnow() - timedelta(minutes=1)
    low = harness.run(plain, priority=0, queued_at=base)
    high = harness.run(limited, priority=10, queued_at=base + timedelta(seconds=1))
    assert harness.handle(low.id).run_id == high.id
    assert harness.handle(low.id).run_id == low.id
    assert [r.headers["X-Sluice-Run-Id"] for r, _ in httpserver.log] == [high.id, low.id]
    harness.monitor.flush_releases()  # a cap of 5 with 1 in use had room to spare: released in a batch
    assert harness.limits.slots_in_use(limited.id) == 0


def test_terminal_hooks_are_recorded_in_a_transaction(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/w").respond_with_data("ok")
    httpserver.expect_request("/hook").respond_with_data("")
    job = harness.job(endpoint_url=httpserver.url_for("/w"), webhook_url=httpserver.url_for("/hook"))
    run = harness.run(job)
    assert harness.handle(run.id).action == "completed"
    with harness.session_factory() as s:
        deliveries = s.execute(sa.text("SELECT count(*) FROM webhook_deliveries WHERE run_id = :r"),
                               {"r": run.id}).scalar()
    assert deliveries == 1
    assert [e.type for e in harness.events(run.id)] == ["state_change", "attempt_started", "state_change",
                                                        "attempt_finished"]


def test_pool_connections_stay_transactional(harness: Harness) -> None:
    """A direct connection handed back to the pool is an ordinary one again: transactional, default plans."""
    engine = harness.session_factory.kw["bind"]
    raw = engine.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        dbapi.autocommit = True
        with dbapi.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
        _autocommit_off(dbapi, None)
        assert dbapi.autocommit is False
        with dbapi.cursor() as cursor:
            cursor.execute("SHOW enable_seqscan")
            assert cursor.fetchone() == ("on",)
        dbapi.rollback()
    finally:
        raw.close()


def test_lease_writer_records_what_an_unlimited_acquire_records(harness: Harness) -> None:
    job_id, key = "job-lease-writer", "tenant-1"
    harness.redis.zadd(redis_keys.slot_waiters_job(job_id), {"run-1": 1})
    now_ms = LeaseWriter(ThreadScripts(harness.redis)).record("run-1", job_id, key, 60_000)
    for lease_set in (redis_keys.concurrency_job(job_id), redis_keys.concurrency_key(job_id, key)):
        assert harness.redis.zscore(lease_set, "run-1") == now_ms + 60_000
        assert 60_000 < harness.redis.pttl(lease_set) <= 61_000
    assert harness.redis.zscore(redis_keys.slot_waiters_job(job_id), "run-1") is None
    assert harness.limits.slots_in_use(job_id) == 1 and harness.limits.slots_in_use(job_id, key) == 1
    harness.limits.release("run-1", job_id, key)
    assert harness.limits.slots_in_use(job_id) == 0 and harness.limits.slots_in_use(job_id, key) == 0


def test_a_message_claims_its_own_run_unless_a_higher_priority_is_ready(harness: Harness,
                                                                        httpserver: HTTPServer) -> None:
    """Within the top ready priority, order of readiness is best effort (§5.11): the message's own run is
    claimed by primary key; a duplicate message falls back to the best ready run."""
    httpserver.expect_request("/h").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/h"))
    base = utcnow() - timedelta(minutes=1)
    older = harness.run(job, queued_at=base)
    newer = harness.run(job, queued_at=base + timedelta(seconds=1))
    assert harness.handle(newer.id).run_id == newer.id
    assert harness.handle(newer.id).run_id == older.id  # its own run is gone: the best ready one
    urgent = harness.run(job, priority=5, queued_at=base + timedelta(seconds=2))
    plain = harness.run(job, queued_at=base)
    assert harness.handle(plain.id).run_id == urgent.id
    assert harness.handle(plain.id).run_id == plain.id
