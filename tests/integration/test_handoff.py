"""In-worker slot hand-off (``worker.handoff``): the thread whose attempt ends starts the best waiting run
itself, with the ended attempt's leases passed over atomically (CONTRACT §5.8; docs/flow-control.md).

Real PostgreSQL, Redis and a local HTTP endpoint; the worker paths go through ``worker.runner.Runner``.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import redis as redis_lib
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from shared import redis_keys
from shared.clock import utcnow
from shared.db.models import Job, Run
from shared.limits.limiter import LimitRequest
from shared.limits.waiters import WAKE_MESSAGE
from shared.messages.queue_state import ready_messages
from tests.integration.runner_harness import Harness
from tests.integration.slot_waiter_support import register_waiter
from worker.runner import Runner

T0 = 1_700_000_000_000


class Endpoint:
    """Answers 200 at once; records arrival order and the most calls in flight together."""

    def __init__(self, server: HTTPServer) -> None:
        self.order: list[str] = []
        self.in_flight = self.most = 0
        self._lock = threading.Lock()
        server.expect_request("/hook").respond_with_handler(self._handle)
        self.url = server.url_for("/hook")

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.order.append(request.headers["X-Sluice-Run-Id"])
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        with self._lock:
            self.in_flight -= 1
        return Response("{}", 200, content_type="application/json")


def _waiting(harness: Harness, job: Job, ms: int, kind: str = "max_concurrency", **fields: object) -> Run:
    now = utcnow()
    run = harness.run(job, status="delayed", scheduled_at=now + timedelta(seconds=30),
                      due_at=now + timedelta(seconds=30), queued_at=None, **fields)
    register_waiter(harness.redis, run, kind, T0 + ms)
    return run


def _hold(harness: Harness, job: Job, run_id: str, key: str | None = None) -> None:
    assert harness.limits.acquire(LimitRequest(run_id=run_id, job_id=job.id, max_concurrency=job.max_concurrency,
                                               concurrency_key=key, max_concurrency_per_key=job.max_concurrency_per_key,
                                               lease_ms=600_000)).admitted


def test_the_ending_attempt_chains_every_waiter_in_priority_order(harness: Harness, httpserver: HTTPServer) -> None:
    endpoint = Endpoint(httpserver)
    job = harness.job(endpoint_url=endpoint.url, max_concurrency=1)
    holder = harness.run(job)
    low_old, low_new, high = (_waiting(harness, job, 0), _waiting(harness, job, 5),
                              _waiting(harness, job, 9, priority=7))
    assert harness.handle(holder.id).action == "completed"
    assert endpoint.order == [holder.id, high.id, low_old.id, low_new.id]
    assert endpoint.most == 1
    for run in (high, low_old, low_new):
        done = harness.get(run.id)
        assert done.status == "completed" and done.attempt == 1
        assert len(harness.events(run.id, "attempt_started")) == 1
        assert harness.events(run.id, "state_change")[0].message == WAKE_MESSAGE
        assert done.execution_trace is not None and done.execution_trace["queue_wait_ms"] == 0
    assert harness.limits.slots_in_use(job.id) == 0
    assert ready_messages(harness.broker) == 0  # nothing went through the queue


def test_a_keyed_slot_goes_to_a_waiter_of_that_key_only(harness: Harness, httpserver: HTTPServer) -> None:
    endpoint = Endpoint(httpserver)
    job = harness.job(endpoint_url=endpoint.url, max_concurrency_per_key=1)
    other = harness.run(job, status="executing", attempt=1, started_at=utcnow(), queued_at=None,
                        concurrency_key="t2")
    _hold(harness, job, other.id, "t2")
    holder = harness.run(job, concurrency_key="t1")
    same_key = _waiting(harness, job, 1, "max_concurrency_per_key", concurrency_key="t1")
    other_key = _waiting(harness, job, 0, "max_concurrency_per_key", concurrency_key="t2")
    assert harness.handle(holder.id).action == "completed"
    assert endpoint.order == [holder.id, same_key.id]
    assert harness.get(other_key.id).status == "delayed"
    assert harness.limits.slots_in_use(job.id, "t2") == 1 and harness.limits.slots_in_use(job.id, "t1") == 0


def test_runs_no_longer_waiting_are_skipped(harness: Harness, httpserver: HTTPServer) -> None:
    endpoint = Endpoint(httpserver)
    job = harness.job(endpoint_url=endpoint.url, max_concurrency=1)
    holder = harness.run(job)
    done = harness.run(job, status="completed", attempt=1, started_at=utcnow())
    register_waiter(harness.redis, done, "max_concurrency", T0)
    retrying = _waiting(harness, job, 1, attempt=1, next_retry_at=utcnow() + timedelta(seconds=30))
    waiting = _waiting(harness, job, 2)
    assert harness.handle(holder.id).action == "completed"
    assert endpoint.order == [holder.id, waiting.id]
    assert harness.get(retrying.id).status == "delayed"  # a retry back-off is never cut short
    assert harness.get(done.id).status == "completed"


def test_a_waiter_its_own_limit_refuses_waits_again_and_the_slot_is_freed(harness: Harness,
                                                                         httpserver: HTTPServer) -> None:
    endpoint = Endpoint(httpserver)
    job = harness.job(endpoint_url=endpoint.url, max_concurrency=2, max_concurrency_per_key=1)
    busy = harness.run(job, status="executing", attempt=1, started_at=utcnow(), queued_at=None,
                       concurrency_key="t2")
    _hold(harness, job, busy.id, "t2")
    holder = harness.run(job, concurrency_key="t1")
    blocked = _waiting(harness, job, 0, concurrency_key="t2")  # waits for a job slot; its key is busy too
    assert harness.handle(holder.id).action == "completed"
    assert endpoint.order == [holder.id]
    again = harness.get(blocked.id)
    assert again.status == "delayed" and again.attempt == 0
    assert harness.limits.slots_in_use(job.id) == 1  # the holder's lease is gone, the busy one stays
    assert harness.redis.zrange(redis_keys.slot_waiters_key(job.id, "t2"), 0, -1) == [blocked.id.encode()]


def test_a_stopping_worker_hands_nothing_over_and_wakes_the_waiter(harness: Harness, httpserver: HTTPServer,
                                                                   redis_client: redis_lib.Redis) -> None:
    endpoint = Endpoint(httpserver)
    runner = Runner(session_factory=harness.session_factory, limits=harness.limits, broker=harness.broker,
                    settings=harness.settings, monitor=harness.monitor, stopping=lambda: True)
    job = harness.job(endpoint_url=endpoint.url, max_concurrency=1)
    holder = harness.run(job)
    waiter = _waiting(harness, job, 0)
    before = ready_messages(harness.broker)
    assert runner.handle(holder.id).action == "completed"
    assert endpoint.order == [holder.id]
    assert harness.get(waiter.id).status == "queued"  # promoted and enqueued for any worker
    assert ready_messages(harness.broker) == before + 1
    assert harness.limits.slots_in_use(job.id) == 0


def test_a_woken_waiter_starts_in_one_statement_with_the_usual_events(harness: Harness,
                                                                       httpserver: HTTPServer) -> None:
    endpoint = Endpoint(httpserver)
    job = harness.job(endpoint_url=endpoint.url, max_concurrency=1)
    holder = harness.run(job)
    waiter = _waiting(harness, job, 0)
    assert harness.handle(holder.id).action == "completed"
    assert endpoint.order == [holder.id, waiter.id]
    assert [(e.type, e.message, e.data) for e in harness.events(waiter.id)[:3]] == [
        ("state_change", WAKE_MESSAGE, {"from": "delayed", "to": "queued"}),
        ("state_change", None, {"from": "queued", "to": "executing"}),
        ("attempt_started", None, {"attempt": 1, "job_version": job.version, "endpoint_url": job.endpoint_url}),
    ]
    done = harness.get(waiter.id)
    assert (done.status, done.attempt, done.due_at, done.next_retry_at) == ("completed", 1, None, None)
