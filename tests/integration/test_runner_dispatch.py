"""The dispatch pipeline before and around the call (§5.1): claims, priority, duplicates, holds, expiry,
windows, limits and cancellation of an executing run."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from shared.clock import utcnow
from shared.limits.limiter import LimitRequest
from shared.redis_keys import run_cancel
from shared.runs.effects import Effects
from shared.runs.moves import move
from shared.runs.status import RunStatus
from shared.schedules.cron import next_open_minute, parse_cron
from tests.integration.runner_harness import EVERY_START_VARIANT, Harness
from tests.integration.servers import RawServer, never_answer

pytestmark = EVERY_START_VARIANT


def test_claims_follow_priority_then_queue_order(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/p").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/p"))
    base = utcnow() - timedelta(minutes=1)
    low = harness.run(job, priority=0, queued_at=base)
    high = harness.run(job, priority=10, queued_at=base + timedelta(seconds=2))
    mid_late = harness.run(job, priority=5, queued_at=base + timedelta(seconds=3))
    mid_early = harness.run(job, priority=5, queued_at=base + timedelta(seconds=1))
    for _ in range(4):
        harness.handle(low.id)  # every message claims the best ready run, whichever run it names
    order = [r.headers["X-Sluice-Run-Id"] for r, _ in httpserver.log]
    assert order == [high.id, mid_early.id, mid_late.id, low.id]
    assert harness.handle(low.id).action == "idle"


def test_duplicate_messages_start_one_attempt(harness: Harness, httpserver: HTTPServer) -> None:
    def slow(request: Request) -> Response:
        time.sleep(0.3)
        return Response("ok")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/slow")))
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(harness.handle(run.id).action)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["completed", "idle", "idle", "idle"]
    assert len(httpserver.log) == 1
    assert len(harness.events(run.id, "attempt_started")) == 1
    assert harness.get(run.id).attempt == 1


def test_disabled_job_holds_its_run_once_and_other_runs_proceed(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/e").respond_with_data("ok")
    disabled = harness.job(endpoint_url=httpserver.url_for("/e"), enabled=False)
    held = harness.run(disabled, priority=10)
    assert harness.handle(held.id).action == "held"
    row = harness.get(held.id)
    assert row.status == "queued" and row.held_at is not None and row.attempt == 0
    assert [e.data for e in harness.events(held.id, "held")] == [{}]
    assert harness.handle(held.id).action == "idle"  # held once
    assert len(harness.events(held.id, "held")) == 1

    other = harness.run(harness.job(endpoint_url=httpserver.url_for("/e")))
    assert harness.handle(held.id).action == "completed"  # the message wakes whatever is ready
    assert harness.get(other.id).status == "completed"
    assert harness.get(held.id).status == "queued"


def test_unstarted_run_past_expires_at_expires_at_pick_time(harness: Harness, httpserver: HTTPServer) -> None:
    job = harness.job(endpoint_url=httpserver.url_for("/never"))
    run = harness.run(job, expires_at=utcnow() - timedelta(seconds=1))
    assert harness.handle(run.id).action == "expired"
    done = harness.get(run.id)
    assert (done.status, done.attempt, done.error, done.error_class) == (
        "expired", 0, "expired: not started before expires_at", None)
    assert done.finished_at is not None
    assert httpserver.log == []


def test_started_run_never_expires(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/retry").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/retry"))
    run = harness.run(job, attempt=1, started_at=utcnow() - timedelta(minutes=1),
                      expires_at=utcnow() - timedelta(seconds=1))
    assert harness.handle(run.id).action == "completed"
    assert harness.get(run.id).attempt == 2


def test_closed_window_redelays_to_the_next_open_minute(harness: Harness, httpserver: HTTPServer) -> None:
    now = utcnow()
    closed_hour = (now.hour + 3) % 24
    expression = f"* {closed_hour} * * *"
    job = harness.job(endpoint_url=httpserver.url_for("/w"), execution_window_cron=expression,
                      timezone="Europe/Paris")
    run = harness.run(job)
    assert harness.handle(run.id).action == "redelayed"
    delayed = harness.get(run.id)
    expected = next_open_minute(parse_cron(expression), "Europe/Paris", now)
    assert delayed.status == "delayed" and delayed.attempt == 0 and delayed.started_at is None
    assert delayed.scheduled_at is not None and abs((delayed.scheduled_at - expected).total_seconds()) <= 60
    event = harness.events(run.id, "redelayed")[0].data
    assert event["reason"] == "window" and event["limit"]["execution_window_cron"] == expression
    assert event["until"].endswith("Z")
    assert httpserver.log == []


def test_open_window_runs(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/w").respond_with_data("ok")
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/w"), execution_window_cron="* * * * *"))
    assert harness.handle(run.id).action == "completed"


def test_no_slot_redelays_without_using_an_attempt(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/c").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/c"), max_concurrency=1)
    other = LimitRequest(run_id="someone-else", job_id=job.id, max_concurrency=1, concurrency_key=None,
                         max_concurrency_per_key=None, lease_ms=60_000)
    assert harness.limits.acquire(other).admitted
    run = harness.run(job)
    before = utcnow()
    assert harness.handle(run.id).action == "redelayed"
    delayed = harness.get(run.id)
    assert (delayed.status, delayed.attempt) == ("delayed", 0)
    assert delayed.scheduled_at is not None
    assert before + timedelta(seconds=1) <= delayed.scheduled_at <= utcnow() + timedelta(seconds=2)
    event = harness.events(run.id, "redelayed")[0].data
    assert event["reason"] == "concurrency" and event["limit"]["kind"] == "max_concurrency"

    harness.limits.release("someone-else", job.id, None)
    harness.promote(run.id)
    assert harness.handle(run.id).action == "completed"
    assert harness.limits.slots_in_use(job.id) == 0  # released on exit from executing


def test_per_key_slots(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/k").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/k"), max_concurrency_per_key=1)
    holder = LimitRequest(run_id="holder", job_id=job.id, max_concurrency=None, concurrency_key="tenant-1",
                          max_concurrency_per_key=1, lease_ms=60_000)
    assert harness.limits.acquire(holder).admitted
    blocked = harness.run(job, concurrency_key="tenant-1", priority=5)
    free = harness.run(job, concurrency_key="tenant-2")
    assert harness.handle(blocked.id).action == "redelayed"
    assert harness.events(blocked.id, "redelayed")[0].data["limit"]["kind"] == "max_concurrency_per_key"
    assert harness.handle(free.id).action == "completed"


def test_rate_limit_redelays_until_the_window_has_room(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/r").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/r"), rate_limit_max=1, rate_limit_window_secs=60)
    first = harness.run(job, priority=1)
    second = harness.run(job)
    assert harness.handle(first.id).action == "completed"
    started = harness.get(first.id).started_at
    assert harness.handle(second.id).action == "redelayed"
    delayed = harness.get(second.id)
    assert delayed.attempt == 0 and delayed.scheduled_at is not None and started is not None
    assert abs((delayed.scheduled_at - (started + timedelta(seconds=60))).total_seconds()) < 2
    event = harness.events(second.id, "redelayed")[0].data
    assert event["reason"] == "rate_limit" and event["limit"]["max"] == 1 and event["limit"]["window_secs"] == 60


def _cancel(harness: Harness, run_id: str, *, flag: bool) -> None:
    with harness.session_factory() as s:
        assert move(s, run_id, RunStatus.CANCELED, now=utcnow(), effects=Effects(),
                          values={"error": "canceled", "error_class": None}) is not None
        s.commit()
    if flag:
        harness.redis.set(run_cancel(run_id), "1", ex=3600)


def _start_in_thread(harness: Harness, run_id: str) -> tuple[threading.Thread, list[str]]:
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(harness.handle(run_id).action))
    thread.start()
    deadline = time.monotonic() + 5
    while harness.get(run_id).status != "executing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return thread, results


def test_cancel_of_an_executing_run_stops_the_call_within_a_second(harness: Harness) -> None:
    with RawServer(never_answer) as server:
        job = harness.job(endpoint_url=server.url(), max_concurrency=3)
        run = harness.run(job)
        thread, results = _start_in_thread(harness, run.id)
        assert harness.limits.slots_in_use(job.id) == 1
        canceled_at = time.monotonic()
        _cancel(harness, run.id, flag=True)
        thread.join(timeout=5)
        stopped_after = time.monotonic() - canceled_at
    assert results == ["discarded"]
    assert stopped_after < 1.2
    done = harness.get(run.id)
    assert (done.status, done.error, done.attempt) == ("canceled", "canceled", 1)
    assert harness.events(run.id, "attempt_finished") == []
    assert harness.limits.slots_in_use(job.id) == 0


def test_cancel_without_the_redis_flag_is_noticed_by_the_heartbeat(harness: Harness) -> None:
    with RawServer(never_answer) as server:
        job = harness.job(endpoint_url=server.url())
        run = harness.run(job)
        thread, results = _start_in_thread(harness, run.id)
        _cancel(harness, run.id, flag=False)
        harness.monitor.tick(force_heartbeat=True)
        thread.join(timeout=5)
    assert results == ["discarded"]
    assert harness.get(run.id).status == "canceled"


def test_heartbeat_refreshes_executing_runs(harness: Harness) -> None:
    with RawServer(never_answer) as server:
        run = harness.run(harness.job(endpoint_url=server.url()))
        thread, _ = _start_in_thread(harness, run.id)
        first = harness.get(run.id).heartbeat_at
        time.sleep(0.05)
        harness.monitor.tick(force_heartbeat=True)
        second = harness.get(run.id).heartbeat_at
        assert first is not None and second is not None and second > first
        _cancel(harness, run.id, flag=True)
        thread.join(timeout=5)


def test_a_forced_job_delete_stops_an_executing_call_within_a_second(harness: Harness, client: Any,
                                                                    auth: dict[str, str]) -> None:
    """A forced delete cancels like a cancel: the worker is signalled at once and the slot freed, not at
    its next heartbeat."""
    with RawServer(never_answer) as server:
        job = harness.job(endpoint_url=server.url(), max_concurrency=3)
        run = harness.run(job, concurrency_key="k")
        thread, results = _start_in_thread(harness, run.id)
        assert harness.limits.slots_in_use(job.id) == 1
        deleted_at = time.monotonic()
        assert client.delete(f"/v1/jobs/{job.id}?force=true", headers=auth).status_code == 204
        assert harness.redis.get(run_cancel(run.id)) is not None
        assert harness.limits.slots_in_use(job.id) == 0 and harness.limits.slots_in_use(job.id, "k") == 0
        thread.join(timeout=5)
        stopped_after = time.monotonic() - deleted_at
    assert results == ["discarded"]
    assert stopped_after < 1.2  # the heartbeat would have taken SLUICE_HEARTBEAT_INTERVAL_SECS
