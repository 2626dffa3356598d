"""The fair share between projects (``worker.start_statement``): within a priority, the project with the fewest
executing attempts goes first, whichever message a worker took; and the optional per-project caps.

Real PostgreSQL, Redis and local HTTP endpoints; everything goes through ``worker.runner.Runner``, over every
start variant (plain, limited, windowed, pinned).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis as redis_lib
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker
from werkzeug import Request, Response

from shared.clock import utcnow
from shared.config import Settings
from shared.db.models import Job
from tests.integration.runner_harness import EVERY_START_VARIANT, Harness, make_harness
from worker.start_statement import FAIR_WINDOW

pytestmark = EVERY_START_VARIANT

BASE = utcnow() - timedelta(minutes=5)


def _busy(harness: Harness, job: Job, n: int) -> None:
    """``n`` attempts of ``job``'s project executing elsewhere (another worker's)."""
    for i in range(n):
        harness.run(job, status="executing", attempt=1, started_at=BASE, heartbeat_at=utcnow(),
                    queued_at=None, created_at=BASE + timedelta(milliseconds=i))


def test_a_backlog_in_one_project_does_not_delay_another(harness: Harness, httpserver: HTTPServer) -> None:
    """Project A has attempts executing and a backlog; B's run, queued last, starts with the next message
    a worker takes, even though that message names one of A's runs."""
    httpserver.expect_request("/f").respond_with_data("ok")
    a = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-a")
    b = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-b")
    _busy(harness, a, 2)
    backlog = [harness.run(a, queued_at=BASE + timedelta(seconds=i)) for i in range(5)]
    late = harness.run(b, queued_at=BASE + timedelta(minutes=1))
    assert harness.handle(backlog[0].id).run_id == late.id
    assert harness.get(late.id).status == "completed"
    # B has nothing ready any more: A's messages start A's own runs again.
    assert harness.handle(backlog[1].id).run_id == backlog[1].id


def test_a_message_whose_run_is_gone_starts_the_fairest_run(harness: Harness, httpserver: HTTPServer) -> None:
    """A duplicate message takes the oldest ready run of the project with the fewest executing attempts,
    not the oldest ready run overall."""
    httpserver.expect_request("/f").respond_with_data("ok")
    a = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-a")
    b = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-b")
    c = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-c")
    _busy(harness, a, 3)
    _busy(harness, b, 1)
    _busy(harness, c, 2)
    oldest = harness.run(a, queued_at=BASE)
    of_c = harness.run(c, queued_at=BASE + timedelta(seconds=1))
    of_b = harness.run(b, queued_at=BASE + timedelta(seconds=2))
    assert harness.handle("no-such-run").run_id == of_b.id
    assert harness.handle("no-such-run").run_id == of_c.id  # b: 1 executing, c: 2 ... now b has none ready
    assert harness.handle("no-such-run").run_id == oldest.id


def test_a_busy_projects_messages_visit_every_other_project_in_turn(harness: Harness,
                                                                   httpserver: HTTPServer) -> None:
    """With more projects ready than the fair pick compares at once (``FAIR_WINDOW``), a busy project's
    messages still start one run of every other project before a second run of any: the window moves on
    from the project of the last run started."""
    httpserver.expect_request("/f").respond_with_data("ok")
    busy = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-busy")
    _busy(harness, busy, 3)
    others = [harness.job(endpoint_url=httpserver.url_for("/f"), project_id=f"proj-{i:03d}")
              for i in range(FAIR_WINDOW + 8)]
    for turn in range(2):  # every project's first run is older than any second run
        for i, job in enumerate(others):
            harness.run(job, queued_at=BASE + timedelta(seconds=turn * len(others) + i))
    messages = [harness.run(busy, queued_at=BASE + timedelta(minutes=1)) for _ in others]
    started = [harness.handle(message.id).run_id for message in messages]
    assert {harness.get(run_id).job_id for run_id in started} == {job.id for job in others}


def test_equal_shares_keep_the_order_of_readiness(harness: Harness, httpserver: HTTPServer) -> None:
    """With as many executing attempts in each project, a message starts its own run, and the best run
    is the oldest ready one; a higher priority still goes first whatever the shares."""
    httpserver.expect_request("/f").respond_with_data("ok")
    a = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-a")
    b = harness.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-b")
    _busy(harness, a, 1)
    _busy(harness, b, 1)
    of_b = harness.run(b, queued_at=BASE)
    of_a = harness.run(a, queued_at=BASE + timedelta(seconds=1))
    assert harness.handle(of_a.id).run_id == of_a.id
    assert harness.handle(of_a.id).run_id == of_b.id
    _busy(harness, a, 3)
    urgent = harness.run(a, priority=5, queued_at=BASE + timedelta(seconds=3))
    plain = harness.run(b, queued_at=BASE)
    assert harness.handle(plain.id).run_id == urgent.id


@pytest.fixture()
def capped(request: pytest.FixtureRequest, settings: Settings, session_factory: sessionmaker[Session],
           redis_client: redis_lib.Redis) -> Iterator[Harness]:
    capped_settings = settings.with_overrides(project_max_executing=2, project_max_timeout_secs=1)
    h = make_harness(capped_settings, session_factory, redis_client, variant=request.node.callspec.params["harness"])
    h.monitor.start()
    try:
        yield h
    finally:
        h.monitor.stop()


def test_a_project_at_its_cap_waits_without_using_an_attempt(harness: Harness, capped: Harness,
                                                             httpserver: HTTPServer) -> None:
    httpserver.expect_request("/f").respond_with_data("ok")
    a = capped.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-a")
    b = capped.job(endpoint_url=httpserver.url_for("/f"), project_id="proj-b")
    _busy(capped, a, 2)
    run = capped.run(a)
    handled = capped.handle(run.id)
    assert (handled.action, handled.run_id) == ("redelayed", run.id)
    got = capped.get(run.id)
    assert (got.status, got.attempt) == ("delayed", 0)
    [event] = capped.events(run.id, "redelayed")
    assert event.data["reason"] == "concurrency"
    assert event.data["limit"] == {"kind": "project_max_executing", "max": 2}
    assert got.scheduled_at is not None and got.scheduled_at > utcnow()
    other = capped.run(b)  # another project is not held back by A's cap
    assert capped.handle(other.id).action == "completed"
    _busy(capped, b, 1)
    below = capped.run(b)
    assert capped.handle(below.id).action == "completed"  # 1 executing, cap 2: room for one more


def test_an_attempt_is_cut_to_the_project_timeout_cap(harness: Harness, capped: Harness,
                                                      httpserver: HTTPServer) -> None:
    release, answered = threading.Event(), threading.Event()

    def slow(request: Request) -> Response:
        release.wait(3)
        answered.set()
        return Response("late")

    httpserver.expect_request("/slow").respond_with_handler(slow)
    job = capped.job(endpoint_url=httpserver.url_for("/slow"), timeout_secs=60, max_attempts=1)
    run = capped.run(job, timeout_secs_override=30)
    started = time.monotonic()
    handled = capped.handle(run.id)
    assert time.monotonic() - started < 2.5
    release.set()  # the endpoint answers (to nobody) now, not into the next test's request log
    assert answered.wait(5)
    got = capped.get(run.id)
    assert (handled.action, got.status) == ("timed_out", "timed_out")
    assert got.error is not None and "1 s" in got.error
