"""Runs of limited jobs start on the worker's direct connection (worker.limited_start): the claim keeps the
run locked across the Redis limit script, then one more round trip starts or re-delays it and commits."""

from __future__ import annotations

import json

import pytest
import redis as redis_lib
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker
from werkzeug import Response

from shared import redis_keys
from shared.limits.limiter import LimitDecision, LimitRequest, Limits
from tests.integration.runner_harness import Harness, harness_fixture  # noqa: F401  (fixture)
from worker.limited_start import DirectStarter


def _expects_limited(harness: Harness) -> bool:
    starter = harness.runner._starter
    assert isinstance(starter, DirectStarter)
    return bool(getattr(starter._local, "expect_limited", False))


def test_limited_run_starts_with_its_leases_and_rate_mark(harness: Harness, httpserver: HTTPServer) -> None:
    seen: list[int] = []
    httpserver.expect_request("/l").respond_with_handler(
        lambda request: (seen.append(harness.limits.slots_in_use(job.id)), Response("ok"))[1])
    job = harness.job(endpoint_url=httpserver.url_for("/l"), max_concurrency=5, max_concurrency_per_key=2,
                      rate_limit_max=100, rate_limit_window_secs=10)
    run = harness.run(job, concurrency_key="tenant-1")
    assert harness.handle(run.id).action == "completed"
    assert seen == [1]  # the job lease existed during the call
    got = harness.get(run.id)
    assert (got.status, got.attempt) == ("completed", 1)
    events = harness.events(run.id)
    assert [(e.type, e.data) for e in events[:2]] == [
        ("state_change", {"from": "queued", "to": "executing"}),
        ("attempt_started", {"attempt": 1, "job_version": job.version, "endpoint_url": job.endpoint_url}),
    ]
    assert harness.redis.zcard(redis_keys.rate_job(job.id)) == 1
    assert harness.limits.slots_in_use(job.id) == 0  # released at the end (through the hand-off)
    assert harness.limits.slots_in_use(job.id, "tenant-1") == 0
    assert _expects_limited(harness)


def test_refusal_redelays_without_using_an_attempt(harness: Harness, httpserver: HTTPServer) -> None:
    job = harness.job(endpoint_url=httpserver.url_for("/never"), max_concurrency=1)
    assert harness.limits.acquire(LimitRequest(run_id="holder", job_id=job.id, max_concurrency=1,
                                               concurrency_key=None, max_concurrency_per_key=None,
                                               lease_ms=60_000)).admitted
    run = harness.run(job, priority=4)
    handled = harness.handle(run.id)
    assert (handled.action, handled.run_id) == ("redelayed", run.id)
    got = harness.get(run.id)
    assert (got.status, got.attempt) == ("delayed", 0)
    assert got.scheduled_at is not None and got.due_at == got.scheduled_at
    [event] = harness.events(run.id, "redelayed")
    assert event.data["reason"] == "concurrency" and event.data["limit"]["kind"] == "max_concurrency"
    # the start made before the limit script answered was rolled back: no trace of it
    assert [(e.type, e.data.get("to")) for e in harness.events(run.id)] == [("state_change", "delayed"),
                                                                             ("redelayed", None)]
    waiters = harness.redis.zrange(redis_keys.slot_waiters_job(job.id), 0, -1)
    assert waiters == [run.id.encode()]  # registered by the same script: a release wakes it
    assert len(httpserver.log) == 0


def test_rate_refusal_waits_until_the_window_has_room(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/r").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/r"), rate_limit_keys=[
        {"name": "customer", "max": 1, "window_secs": 60}])
    first = harness.run(job, payload=json.dumps({"customer": "acme"}))
    second = harness.run(job, payload=json.dumps({"customer": "acme"}))
    other = harness.run(job, payload=json.dumps({"customer": "globex"}))
    assert harness.handle(first.id).action == "completed"
    assert harness.handle(second.id).action == "redelayed"
    assert harness.handle(other.id).action == "completed"  # another customer's window
    [event] = harness.events(second.id, "redelayed")
    assert event.data["reason"] == "rate_limit" and event.data["limit"]["name"] == "customer"
    assert harness.get(second.id).scheduled_at > harness.get(first.id).started_at  # type: ignore[operator]


def test_the_run_stays_locked_during_the_limit_script(harness: Harness, httpserver: HTTPServer,
                                                       session_factory: sessionmaker[Session]) -> None:
    httpserver.expect_request("/lock").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/lock"), max_concurrency=2)
    run = harness.run(job)
    claimable: list[int] = []

    class Watching(Limits):  # the real limits; it looks at the row from another connection meanwhile
        def acquire(self, req: LimitRequest, now_ms: int | None = None) -> LimitDecision:
            with session_factory() as s:
                claimable.append(len(s.execute(sa.text(
                    "SELECT id FROM runs WHERE id = :id FOR UPDATE SKIP LOCKED"), {"id": req.run_id}).all()))
                s.rollback()
            return super().acquire(req, now_ms)

    harness.runner._starter._limits = Watching(harness.redis)  # type: ignore[union-attr]
    assert harness.handle(run.id).action == "completed"
    assert claimable == [0]  # nobody else could claim it while its limits were checked
    assert harness.get(run.id).attempt == 1


def test_a_redis_failure_leaves_the_run_queued_and_the_connection_usable(
        harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/down").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/down"), max_concurrency=2)
    run = harness.run(job)

    class Down(Limits):
        def acquire(self, req: LimitRequest, now_ms: int | None = None) -> LimitDecision:
            raise redis_lib.exceptions.ConnectionError("redis is down")

    starter = harness.runner._starter
    assert starter is not None
    real = starter._limits
    starter._limits = Down(harness.redis)
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        harness.handle(run.id)
    assert (harness.get(run.id).status, harness.get(run.id).attempt) == ("queued", 0)
    starter._limits = real
    assert harness.handle(run.id).action == "completed"  # same thread, same connection, no transaction left


def test_a_thread_expecting_limits_still_starts_unlimited_runs_and_commits(
        harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data("ok")
    limited = harness.job(endpoint_url=httpserver.url_for("/m"), max_concurrency=4)
    plain = harness.job(endpoint_url=httpserver.url_for("/m"))
    assert harness.handle(harness.run(limited).id).action == "completed"
    assert _expects_limited(harness)
    run = harness.run(plain)
    assert harness.handle(run.id).action == "completed"
    assert not _expects_limited(harness)
    assert harness.get(run.id).attempt == 1  # committed: visible to another connection
    assert harness.handle(run.id).action == "idle"  # the message is spent, nothing is queued or locked


def test_a_limited_job_with_a_window_takes_the_checked_path(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/c").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/c"), max_concurrency=2, execution_window_cron="* * * * *")
    run = harness.run(job)
    handled = harness.handle(run.id)
    assert (handled.action, handled.run_id) == ("completed", run.id)
    assert not _expects_limited(harness)  # the claim statement never offered it as a limited start
    assert harness.limits.slots_in_use(job.id) == 0


def test_per_thread_scripts_survive_a_script_flush_and_a_dropped_connection(
        harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/f").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/f"), max_concurrency=3)
    assert harness.handle(harness.run(job).id).action == "completed"
    harness.redis.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT, EVAL loads it again
    assert harness.handle(harness.run(job).id).action == "completed"
    host, port = harness.limits.scripts._local.connection._sock.getsockname()[:2]
    harness.redis.client_kill(f"{host}:{port}")  # the server drops it: one call fails ...
    run = harness.run(job)
    with pytest.raises((redis_lib.exceptions.ConnectionError, OSError)):
        harness.handle(run.id)
    assert harness.get(run.id).status == "queued"
    assert harness.handle(run.id).action == "completed"  # ... and the next one reconnects


@pytest.mark.parametrize(("cap", "released_at_once"), [(3, True), (100, False)])
def test_leases_with_room_to_spare_are_released_in_a_batch(harness: Harness, httpserver: HTTPServer,
                                                           cap: int, released_at_once: bool) -> None:
    """A tight cap hands its slot on at once (worker.handoff); one at most a quarter used, with nobody
    waiting, leaves the release to the monitor's next poll, like a job without limits."""
    httpserver.expect_request("/b").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/b"), max_concurrency=cap)
    harness.monitor.stop()  # no poll in between
    assert harness.handle(harness.run(job).id).action == "completed"
    assert harness.limits.slots_in_use(job.id) == (0 if released_at_once else 1)
    harness.monitor.flush_releases()
    assert harness.limits.slots_in_use(job.id) == 0


def test_a_waiting_run_makes_the_release_immediate(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/w").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/w"), max_concurrency=100)
    harness.redis.zadd(redis_keys.slot_waiters_job(job.id), {"someone-waiting": 1})
    harness.monitor.stop()
    assert harness.handle(harness.run(job).id).action == "completed"
    assert harness.limits.slots_in_use(job.id) == 0  # released (the stale waiter was popped and skipped)
