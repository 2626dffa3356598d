"""Slot hand-off (``shared.limits.waiters``): a concurrency refusal registers a waiter, a released slot wakes
the best one at once (CONTRACT §5.8; the early promotion is the documented deviation from §5.11).

Real PostgreSQL and Redis; the worker paths go through ``worker.runner.Runner`` (``harness``).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import redis as redis_lib
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session
from werkzeug import Request, Response

from scheduler.reaper import reap_stale_attempts
from shared import redis_keys
from shared.clock import utcnow
from shared.db.models import Job, Run
from shared.limits.limiter import LimitRequest
from shared.limits.waiters import MAX_POPS, WAKE_MESSAGE, SlotWaiters
from shared.messages.queue_state import ready_messages
from shared.runs.actions import CancelResult, cancel_run
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from tests.integration.runner_harness import Harness
from tests.integration.slot_waiter_support import register_waiter

T0 = 1_700_000_000_000


def _delayed(harness: Harness, job: Job, **fields: object) -> Run:
    now = utcnow()
    return harness.run(job, status="delayed", scheduled_at=now + timedelta(seconds=2),
                       due_at=now + timedelta(seconds=2), queued_at=None, **fields)


def _wake(harness: Harness, *slots: tuple[str, str | None]) -> list[str]:
    return SlotWaiters(harness.redis).wake(list(slots), open_session=harness.session_factory,
                                           broker=harness.broker)


def _messages(harness: Harness) -> int:
    return ready_messages(harness.broker)


# ---------------------------------------------------------------------------------------------- registering

def test_pop_order_is_priority_then_age(harness: Harness, redis_client: redis_lib.Redis) -> None:
    job = harness.job(max_concurrency=1)
    old_low, new_low, new_high = (_delayed(harness, job, priority=p) for p in (0, 0, 7))
    for run, ms in ((new_low, T0 + 10), (old_low, T0), (new_high, T0 + 20)):
        register_waiter(redis_client, run, "max_concurrency", ms)
    waiters = SlotWaiters(redis_client)
    key = redis_keys.slot_waiters_job(job.id)
    popped = [waiters.pop([key])[1][0] for _ in range(4)]
    assert popped == [new_high.id, old_low.id, new_low.id, None]


# ---------------------------------------------------------------------------------------------- waking

def test_wake_promotes_the_best_delayed_waiter_at_once_and_enqueues_it(
        harness: Harness, redis_client: redis_lib.Redis) -> None:
    job = harness.job(max_concurrency=1)
    first, second = _delayed(harness, job), _delayed(harness, job)
    for i, run in enumerate((first, second)):
        register_waiter(redis_client, run, "max_concurrency", T0 + i)
    before = _messages(harness)
    assert _wake(harness, (job.id, None)) == [first.id]
    promoted = harness.get(first.id)
    assert promoted.status == "queued" and promoted.due_at is None and promoted.queued_at is not None
    assert promoted.scheduled_at is not None and promoted.scheduled_at > utcnow()  # before its retry time
    [change] = [e for e in harness.events(first.id, "state_change") if e.data["to"] == "queued"]
    assert change.data == {"from": "delayed", "to": "queued"} and change.message == WAKE_MESSAGE
    assert _messages(harness) == before + 1
    assert harness.get(second.id).status == "delayed"  # one slot, one waiter
    assert redis_client.zrange(redis_keys.slot_waiters_job(job.id), 0, -1) == [second.id.encode()]


def test_stale_ids_are_dropped_and_the_next_waiter_promoted(harness: Harness, redis_client: redis_lib.Redis) -> None:
    job = harness.job(max_concurrency=1)
    started = harness.run(job, status="executing", attempt=1, started_at=utcnow(), queued_at=None)
    done = harness.run(job, status="completed", attempt=1, started_at=utcnow())
    queued = harness.run(job)  # promoted by the sweeper meanwhile
    retrying = _delayed(harness, job, attempt=1, next_retry_at=utcnow() + timedelta(seconds=30))
    waiting = _delayed(harness, job)
    for i, run in enumerate((started, done, queued, retrying, waiting)):
        register_waiter(redis_client, run, "max_concurrency", T0 + i)
    register_waiter(redis_client, Run(id="00000000-0000-7000-8000-000000000000", job_id=job.id, priority=0,
                                      concurrency_key=None), "max_concurrency", T0 - 1)
    assert _wake(harness, (job.id, None)) == [waiting.id]
    assert [harness.get(r.id).status for r in (started, done, queued, retrying)] == [
        "executing", "completed", "queued", "delayed"]  # a retry delay is never cut short
    assert redis_client.zcard(redis_keys.slot_waiters_job(job.id)) == 0


def test_wake_gives_up_after_a_bounded_number_of_stale_ids(harness: Harness,
                                                            redis_client: redis_lib.Redis) -> None:
    job = harness.job(max_concurrency=1)
    stale = [harness.run(job, status="completed", attempt=1, started_at=utcnow()) for _ in range(MAX_POPS + 2)]
    for i, run in enumerate(stale):
        register_waiter(redis_client, run, "max_concurrency", T0 + i)
    assert _wake(harness, (job.id, None)) == []
    assert redis_client.zcard(redis_keys.slot_waiters_job(job.id)) == 2


def test_keyed_release_wakes_the_job_and_the_key_waiter(harness: Harness, redis_client: redis_lib.Redis) -> None:
    job = harness.job(max_concurrency=5, max_concurrency_per_key=1)
    job_waiter = _delayed(harness, job)
    key_waiter = _delayed(harness, job, concurrency_key="t1")
    other_key = _delayed(harness, job, concurrency_key="t2")
    register_waiter(redis_client, job_waiter, "max_concurrency", T0)
    register_waiter(redis_client, key_waiter, "max_concurrency_per_key", T0)
    register_waiter(redis_client, other_key, "max_concurrency_per_key", T0)
    assert sorted(_wake(harness, (job.id, "t1"))) == sorted([job_waiter.id, key_waiter.id])
    assert harness.get(other_key.id).status == "delayed"


def test_no_waiter_opens_no_session(harness: Harness) -> None:
    opened: list[Session] = []

    def open_session():  # type: ignore[no-untyped-def]
        opened.append(harness.session_factory())
        return opened[-1]

    assert SlotWaiters(harness.redis).wake([("00000000-0000-7000-8000-000000000001", "k")],
                                          open_session=open_session, broker=harness.broker) == []
    assert opened == []


def test_redis_failure_is_swallowed(harness: Harness) -> None:
    dead = redis_lib.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    assert SlotWaiters(dead).wake([("j", None)], open_session=harness.session_factory, broker=harness.broker) == []


# ---------------------------------------------------------------------------------------------- call sites

def test_worker_refusal_registers_and_the_holder_thread_starts_the_waiter(harness: Harness,
                                                                          httpserver: HTTPServer) -> None:
    release = threading.Event()
    arrivals: list[str] = []

    def slow(request: Request) -> Response:
        arrivals.append(request.headers["X-Sluice-Run-Id"])
        release.wait(5)
        return Response("{}", 200, content_type="application/json")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    job = harness.job(endpoint_url=httpserver.url_for("/slow"), max_concurrency=1)
    holder = harness.run(job, priority=5)
    waiter = harness.run(job, priority=2)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(harness.handle(holder.id).action))
    thread.start()
    deadline = time.monotonic() + 5
    while harness.get(holder.id).status != "executing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert harness.handle(waiter.id).action == "redelayed"
    assert harness.get(waiter.id).status == "delayed"
    # Registered by the limit script itself, with the Redis clock of the refusal.
    [(member, score)] = harness.redis.zrange(redis_keys.slot_waiters_job(job.id), 0, -1, withscores=True)
    assert member == waiter.id.encode() and -2 * 10**13 < score < -2 * 10**13 + time.time() * 1000 + 5000
    release.set()
    thread.join(10)
    assert results == ["completed"]  # what the holder's own message did
    # ... and then the same thread took the slot over for the waiter and ran it, long before its retry time.
    woken = harness.get(waiter.id)
    assert woken.status == "completed" and woken.attempt == 1
    assert woken.scheduled_at is not None and woken.scheduled_at > woken.started_at
    assert arrivals == [holder.id, waiter.id]
    changes = [(e.data["from"], e.data["to"], e.message) for e in harness.events(waiter.id, "state_change")]
    assert ("delayed", "queued", WAKE_MESSAGE) in changes and changes[-2][:2] == ("queued", "executing")
    assert len(harness.events(waiter.id, "attempt_started")) == 1
    assert harness.limits.slots_in_use(job.id) == 0
    assert not harness.redis.exists(redis_keys.slot_waiters_job(job.id))


def _holding_lease(harness: Harness, job_fields: dict[str, object], **run_fields: object) -> Run:
    job = harness.job(**job_fields)  # type: ignore[arg-type]
    now = utcnow()
    run = harness.run(job, status="executing", attempt=1, started_at=now, heartbeat_at=now, queued_at=None,
                      **run_fields)
    lease = LimitRequest(run_id=run.id, job_id=job.id, max_concurrency=job.max_concurrency,
                         concurrency_key=run.concurrency_key, max_concurrency_per_key=job.max_concurrency_per_key,
                         lease_ms=600_000)
    assert harness.limits.acquire(lease).admitted
    return run


def test_reaper_release_wakes_a_waiter_after_its_commit(harness: Harness, redis_client: redis_lib.Redis) -> None:
    holder = _holding_lease(harness, {"max_concurrency": 1, "max_attempts": 3})
    job = _job(harness, holder.job_id)
    waiter = _delayed(harness, job)
    register_waiter(redis_client, waiter, "max_concurrency", T0)
    harness.update_run(holder.id, heartbeat_at=utcnow() - timedelta(minutes=5))
    with harness.session_factory() as s:
        effects = Effects()
        assert reap_stale_attempts(s, utcnow(), harness.settings, harness.limits, effects) == [holder.id]
        assert effects.wake_slots == [(job.id, None)]
        assert harness.get(waiter.id).status == "delayed"  # nothing happens before the commit
        commit_and_apply(s, effects, harness.broker)
    assert harness.get(waiter.id).status == "queued"
    assert effects.wake_slots == []


def test_cancel_of_an_executing_run_wakes_a_waiter(harness: Harness, redis_client: redis_lib.Redis) -> None:
    holder = _holding_lease(harness, {"max_concurrency_per_key": 1}, concurrency_key="t1")
    job_id = holder.job_id
    waiter = _delayed(harness, _job(harness, job_id), concurrency_key="t1")
    register_waiter(redis_client, waiter, "max_concurrency_per_key", T0)
    with harness.session_factory() as s:
        effects, result = Effects(), CancelResult()
        cancel_run(s, holder.project_id, holder.id, now=utcnow(), effects=effects, result=result)
        assert effects.wake_slots == [(job_id, "t1")]
        assert effects.canceled_attempts == [(holder.id, job_id, "t1")]
        commit_and_apply(s, effects, harness.broker)  # signals the canceled attempt, then wakes the waiter
    assert harness.get(waiter.id).status == "queued"
    assert harness.limits.slots_in_use(job_id, "t1") == 0


def _job(harness: Harness, job_id: str) -> Job:
    with harness.session_factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job

