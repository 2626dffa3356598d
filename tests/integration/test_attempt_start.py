"""Starting an attempt (``worker.start``): which run, whether it starts, and what each refusal does.

Real PostgreSQL, Redis and local HTTP endpoints; everything goes through ``worker.runner.Runner``.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis as redis_lib
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker
from werkzeug import Request, Response

from shared import redis_keys
from shared.clock import utcnow
from shared.config import Settings
from shared.limits.limiter import LimitDecision, LimitRequest, Limits
from tests import factories
from tests.integration.runner_harness import Harness, make_harness


def test_plain_run_starts_and_ends(harness: Harness, httpserver: HTTPServer) -> None:
    # The monitor polls only when told to here: its own 0.1 s poll would record the lease before the endpoint
    # looks whenever the call takes longer than that (a busy machine), which is not what this test checks.
    harness.monitor.stop()
    in_use: list[tuple[int, int]] = []

    def answer(request: Request) -> Response:
        # A job without limits: the attempt monitor records the lease at its next poll (worker.heartbeat).
        before = harness.limits.slots_in_use(job.id)
        harness.monitor.record_leases()
        in_use.append((before, harness.limits.slots_in_use(job.id)))
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
    assert in_use == [(0, 1)]
    harness.monitor.record_leases()  # nothing left to record: the attempt has ended
    harness.monitor.flush_releases()  # a terminal run's lease goes at the monitor's next poll (worker.heartbeat)
    assert harness.limits.slots_in_use(job.id) == 0


def test_retry_releases_its_lease_at_once(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/retry").respond_with_data("busy", status=503)
    job = harness.job(endpoint_url=httpserver.url_for("/retry"), max_attempts=3)
    run = harness.run(job)
    assert harness.handle(run.id).action == "delayed"
    assert harness.limits.slots_in_use(job.id) == 0  # a retry may take a lease again soon: not deferred


def test_a_lease_recorded_by_the_monitor_is_gone_once_the_attempt_ends(harness: Harness,
                                                                       httpserver: HTTPServer) -> None:
    """A job without limits: the lease the monitor wrote while the call ran is dropped after it (terminal:
    at the next poll; a retry: at once), and an attempt that ended before any poll writes none."""
    def answer(request: Request) -> Response:
        harness.monitor.record_leases()
        return Response("busy", status=503) if request.path == "/retry" else Response("ok")

    httpserver.expect_request("/done").respond_with_handler(answer)
    httpserver.expect_request("/retry").respond_with_handler(answer)
    done = harness.job(endpoint_url=httpserver.url_for("/done"))
    retried = harness.job(endpoint_url=httpserver.url_for("/retry"), max_attempts=3)
    assert harness.handle(harness.run(retried).id).action == "delayed"
    assert harness.limits.slots_in_use(retried.id) == 0
    assert harness.handle(harness.run(done).id).action == "completed"
    harness.monitor.tick()
    assert harness.limits.slots_in_use(done.id) == 0
    quick = harness.job(endpoint_url=httpserver.url_for("/quick"))
    httpserver.expect_request("/quick").respond_with_data("ok")
    assert harness.handle(harness.run(quick).id).action == "completed"
    harness.monitor.tick()
    assert harness.limits.slots_in_use(quick.id) == 0


def test_userinfo_is_stripped_from_the_attempt_started_event(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/u").respond_with_data("ok")
    url = httpserver.url_for("/u").replace("http://", "http://user:secret@")
    run = harness.run(harness.job(endpoint_url=url))
    assert harness.handle(run.id).action == "completed"
    started = harness.events(run.id, "attempt_started")[0].data
    assert started["endpoint_url"] == httpserver.url_for("/u")


def test_a_message_starts_its_own_run_unless_a_higher_priority_is_ready(harness: Harness,
                                                                        httpserver: HTTPServer) -> None:
    """Within the top ready priority, order of readiness is best effort: the message's own run is started;
    a duplicate message falls back to the best ready run; a higher priority always goes first."""
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


def test_a_better_run_of_a_limited_job_goes_first(harness: Harness, httpserver: HTTPServer) -> None:
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


def test_terminal_hooks_are_recorded_with_the_outcome(harness: Harness, httpserver: HTTPServer) -> None:
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


def test_limited_run_starts_with_its_leases_and_rate_mark(harness: Harness, httpserver: HTTPServer) -> None:
    seen: list[int] = []
    httpserver.expect_request("/l").respond_with_handler(
        lambda request: (seen.append(harness.limits.slots_in_use(job.id)), Response("ok"))[1])
    job = harness.job(endpoint_url=httpserver.url_for("/l"), max_concurrency=5, max_concurrency_per_key=2,
                      rate_limit_max=100, rate_limit_window_secs=10)
    run = harness.run(job, concurrency_key="tenant-1")
    assert harness.handle(run.id).action == "completed"
    assert seen == [1]  # the job lease existed during the call
    events = harness.events(run.id)
    assert [(e.type, e.data) for e in events[:2]] == [
        ("state_change", {"from": "queued", "to": "executing"}),
        ("attempt_started", {"attempt": 1, "job_version": job.version, "endpoint_url": job.endpoint_url}),
    ]
    assert harness.redis.zcard(redis_keys.rate_job(job.id)) == 1
    assert harness.limits.slots_in_use(job.id) == 0  # released at the end (through the hand-off)
    assert harness.limits.slots_in_use(job.id, "tenant-1") == 0


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


def _harness_with(limits: Limits, settings: Settings, session_factory: sessionmaker[Session],
                  redis_client: redis_lib.Redis) -> Harness:
    return make_harness(settings, session_factory, redis_client, limits=limits)


def test_the_run_stays_locked_while_its_limits_are_checked(settings: Settings, httpserver: HTTPServer,
                                                           session_factory: sessionmaker[Session],
                                                           redis_client: redis_lib.Redis) -> None:
    claimable: list[int] = []

    class Watching(Limits):  # the real limits; it looks at the row from another connection meanwhile
        def acquire(self, req: LimitRequest, now_ms: int | None = None) -> LimitDecision:
            with session_factory() as s:
                claimable.append(len(s.execute(sa.text(
                    "SELECT id FROM runs WHERE id = :id FOR UPDATE SKIP LOCKED"), {"id": req.run_id}).all()))
                s.rollback()
            return super().acquire(req, now_ms)

    harness = _harness_with(Watching(redis_client, per_thread_connections=True), settings, session_factory,
                            redis_client)
    httpserver.expect_request("/lock").respond_with_data("ok")
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/lock"), max_concurrency=2))
    assert harness.handle(run.id).action == "completed"
    assert claimable == [0]  # nobody else could claim it while its limits were checked
    assert harness.get(run.id).attempt == 1


def test_a_redis_failure_leaves_the_run_queued_and_the_connection_usable(
        settings: Settings, httpserver: HTTPServer, session_factory: sessionmaker[Session],
        redis_client: redis_lib.Redis) -> None:
    down = {"now": True}

    class Flaky(Limits):
        def acquire(self, req: LimitRequest, now_ms: int | None = None) -> LimitDecision:
            if down["now"]:
                raise redis_lib.exceptions.ConnectionError("redis is down")
            return super().acquire(req, now_ms)

    harness = _harness_with(Flaky(redis_client), settings, session_factory, redis_client)
    httpserver.expect_request("/down").respond_with_data("ok")
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/down"), max_concurrency=2))
    with pytest.raises(redis_lib.exceptions.ConnectionError):
        harness.handle(run.id)
    assert (harness.get(run.id).status, harness.get(run.id).attempt) == ("queued", 0)
    down["now"] = False
    assert harness.handle(run.id).action == "completed"  # same thread, same connection, no transaction left


def test_unlimited_runs_start_after_limited_ones_and_are_committed(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/m").respond_with_data("ok")
    limited = harness.job(endpoint_url=httpserver.url_for("/m"), max_concurrency=4)
    plain = harness.job(endpoint_url=httpserver.url_for("/m"))
    assert harness.handle(harness.run(limited).id).action == "completed"
    run = harness.run(plain)
    assert harness.handle(run.id).action == "completed"
    assert harness.get(run.id).attempt == 1  # committed: visible to another connection
    assert harness.handle(run.id).action == "idle"  # the message is spent, nothing is queued or locked


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


def test_a_closed_window_redelays_to_the_next_open_minute(harness: Harness, httpserver: HTTPServer) -> None:
    now = utcnow()
    closed_hour = (now.hour + 2) % 24  # open only two hours from now
    job = harness.job(endpoint_url=httpserver.url_for("/never"), execution_window_cron=f"* {closed_hour} * * *",
                      max_concurrency=3)
    run = harness.run(job)
    handled = harness.handle(run.id)
    assert (handled.action, handled.run_id) == ("redelayed", run.id)
    got = harness.get(run.id)
    assert (got.status, got.attempt) == ("delayed", 0)
    assert got.scheduled_at is not None and got.scheduled_at.hour == closed_hour and got.scheduled_at.minute == 0
    [event] = harness.events(run.id, "redelayed")
    assert event.data["reason"] == "window" and event.data["limit"]["kind"] == "execution_window"
    assert harness.limits.slots_in_use(job.id) == 0  # the window is checked before any slot is taken
    assert len(httpserver.log) == 0


def test_a_pinned_run_calls_its_own_version(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/v1").respond_with_data("one")
    job = harness.job(endpoint_url=httpserver.url_for("/v1"))
    run = harness.run(job)
    with harness.session_factory() as s:
        factories.bump_version(s, job, endpoint_url=httpserver.url_for("/v2"))
        s.commit()
    assert harness.handle(run.id).action == "completed"
    assert [r.path for r, _ in httpserver.log] == ["/v1"]
    started = harness.events(run.id, "attempt_started")[0].data
    assert (started["job_version"], started["endpoint_url"]) == (1, httpserver.url_for("/v1"))


def test_a_run_past_its_expiry_expires_at_pick_time(harness: Harness, httpserver: HTTPServer) -> None:
    job = harness.job(endpoint_url=httpserver.url_for("/never"))
    run = harness.run(job, expires_at=utcnow() - timedelta(seconds=1))
    assert harness.handle(run.id).action == "expired"
    got = harness.get(run.id)
    assert (got.status, got.attempt, got.error) == ("expired", 0, "expired: not started before expires_at")
    assert got.finished_at is not None
    assert len(httpserver.log) == 0


def test_unusable_stored_settings_fail_the_run(harness: Harness, httpserver: HTTPServer) -> None:
    job = harness.job(endpoint_url=httpserver.url_for("/never"))
    harness.update_job(job.id, retry_strategy="custom", retry_delays_secs=[])  # a row the API would refuse
    run = harness.run(job)
    handled = harness.handle(run.id)
    assert handled.action == "system_failed"
    got = harness.get(run.id)
    assert (got.status, got.error_class) == ("system_failed", "internal")
    assert "custom retry_strategy without retry_delays_secs" in (got.error or "")
    assert len(httpserver.log) == 0


def test_a_disabled_jobs_run_is_held_once(harness: Harness, httpserver: HTTPServer) -> None:
    job = harness.job(endpoint_url=httpserver.url_for("/never"), enabled=False)
    run = harness.run(job)
    assert harness.handle(run.id).action == "held"
    assert harness.handle(run.id).action == "idle"
    assert [e.type for e in harness.events(run.id)] == ["held"]
    assert harness.get(run.id).status == "queued"


def test_a_slot_waiter_is_not_started_ahead_of_a_higher_priority_ready_run(harness: Harness,
                                                                           httpserver: HTTPServer) -> None:
    """A slot handed over goes to a waiting run only while no ready run has a higher priority."""
    capped = harness.job(endpoint_url=httpserver.url_for("/p"), max_concurrency=1)
    other = harness.job(endpoint_url=httpserver.url_for("/other"))
    urgent: list[str] = []

    def answer(request: Request) -> Response:  # a more urgent run of another job becomes ready meanwhile
        urgent.append(harness.run(other, priority=9).id)
        return Response("ok")

    httpserver.expect_request("/p").respond_with_handler(answer)
    holder = harness.run(capped)
    now = utcnow()
    waiter = harness.run(capped, status="delayed", scheduled_at=now + timedelta(seconds=30),
                         due_at=now + timedelta(seconds=30), queued_at=None)
    harness.redis.zadd(redis_keys.slot_waiters_job(capped.id), {waiter.id: 1})
    assert harness.handle(holder.id).run_id == holder.id
    assert harness.get(urgent[0]).status == "queued"
    assert harness.get(waiter.id).status == "queued"  # woken the ordinary way, behind the urgent run
    assert [r.path for r, _ in httpserver.log] == ["/p"]


def test_a_disabled_jobs_run_is_held_even_when_its_message_starts_another_run(harness: Harness,
                                                                              httpserver: HTTPServer) -> None:
    """The ``held`` event is written when the run is held, not only once the worker runs out of work."""
    httpserver.expect_request("/other").respond_with_data("ok")
    disabled = harness.job(endpoint_url=httpserver.url_for("/never"), enabled=False)
    other = harness.job(endpoint_url=httpserver.url_for("/other"))
    run = harness.run(disabled)
    ready = harness.run(other)
    handled = harness.handle(run.id)
    assert (handled.action, handled.run_id) == ("completed", ready.id)  # its message started the other run
    assert [e.type for e in harness.events(run.id)] == ["held"]
    held = harness.get(run.id)
    assert held.status == "queued" and held.held_at is not None
    assert harness.handle(run.id).action == "idle"  # held once
    assert [e.type for e in harness.events(run.id)] == ["held"]
