"""The lost-worker reaper (§5.5) and discarding of late outcomes."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from scheduler.reaper import reap_stale_attempts
from shared.clock import utcnow
from shared.limits.limiter import LimitRequest
from shared.runs.attempts import AttemptEnd, RetryPolicy, finish_attempt
from shared.runs.effects import Effects
from shared.runs.retries import SUCCESS, Outcome
from tests.integration.runner_harness import Harness


def _reap(harness: Harness) -> list[str]:
    with harness.session_factory() as s:
        reaped = reap_stale_attempts(s, utcnow(), harness.settings, harness.limits, Effects())
        s.commit()
    return reaped


def _executing(harness: Harness, job_fields: dict[str, object], *, attempt: int, silent_secs: int) -> str:
    job = harness.job(**job_fields)  # type: ignore[arg-type]
    now = utcnow()
    run = harness.run(job, status="executing", attempt=attempt, started_at=now - timedelta(seconds=silent_secs),
                      heartbeat_at=now - timedelta(seconds=silent_secs), queued_at=None)
    lease = LimitRequest(run_id=run.id, job_id=job.id, max_concurrency=None, concurrency_key=None,
                         max_concurrency_per_key=None, lease_ms=600_000)
    assert harness.limits.acquire(lease).admitted
    return run.id


def test_stale_attempt_with_attempts_left_is_retried(harness: Harness) -> None:
    run_id = _executing(harness, {"max_attempts": 3, "retry_strategy": "fixed"}, attempt=1, silent_secs=120)
    job_id = harness.get(run_id).job_id
    assert _reap(harness) == [run_id]
    run = harness.get(run_id)
    assert (run.status, run.attempt, run.error_class) == ("delayed", 1, "internal")
    assert run.error is not None and run.error.startswith("worker lost: no heartbeat for 1")
    assert run.error.endswith(" s")
    assert run.next_retry_at is not None
    finished = harness.events(run_id, "attempt_finished")[0].data
    assert finished["outcome"] == "retryable" and finished["error_class"] == "internal"
    assert harness.events(run_id, "retry_scheduled")[0].data["delay_secs"] == 1
    assert harness.limits.slots_in_use(job_id) == 0


def test_stale_last_attempt_crashes(harness: Harness) -> None:
    run_id = _executing(harness, {"max_attempts": 2}, attempt=2, silent_secs=61)
    assert _reap(harness) == [run_id]
    run = harness.get(run_id)
    assert (run.status, run.error_class, run.finished_at is not None) == ("crashed", "internal", True)
    assert run.error == "worker lost: no heartbeat for 61 s"


def test_fresh_heartbeat_is_left_alone(harness: Harness) -> None:
    run_id = _executing(harness, {}, attempt=1, silent_secs=5)
    assert _reap(harness) == []
    assert harness.get(run_id).status == "executing"


def test_late_outcome_of_a_reaped_attempt_is_discarded(harness: Harness, httpserver: HTTPServer) -> None:
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(5)
        return Response('{"late": true}', 200, content_type="application/json")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    job = harness.job(endpoint_url=httpserver.url_for("/slow"), retry_strategy="fixed")
    run = harness.run(job)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(harness.handle(run.id).action))
    thread.start()
    deadline = time.monotonic() + 5
    while harness.get(run.id).status != "executing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    harness.update_run(run.id, heartbeat_at=utcnow() - timedelta(minutes=5))  # the worker looks dead
    assert _reap(harness) == [run.id]
    release.set()
    thread.join(timeout=10)

    assert results == ["discarded"]
    run_now = harness.get(run.id)
    assert (run_now.status, run_now.result, run_now.error_class) == ("delayed", None, "internal")
    assert len(harness.events(run.id, "attempt_finished")) == 1


def test_outcome_for_an_older_attempt_never_touches_a_newer_one(harness: Harness) -> None:
    run_id = _executing(harness, {}, attempt=2, silent_secs=0)
    with harness.session_factory() as s:
        late = finish_attempt(s, run_id, AttemptEnd(attempt=1, outcome=Outcome(SUCCESS, http_status=200)),
                              policy=RetryPolicy(3, "fixed", ()), now=utcnow(), effects=Effects())
        s.commit()
    assert late is None
    assert harness.get(run_id).status == "executing"
