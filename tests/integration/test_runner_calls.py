"""The call itself through the Runner: headers and signature (§5.2), retry strategies (§5.4), fallback
(§5.6), version policies (§5.13) and ``debug`` events (§4.8)."""

from __future__ import annotations

import base64

import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks import Webhook
from werkzeug import Request, Response

from shared.db.models import Job
from tests import factories
from tests.factories import JOB_DEFAULTS
from tests.integration.runner_harness import EVERY_START_VARIANT, Harness
from tests.integration.servers import RawServer, never_answer
from worker.http import user_agent as sluice_user_agent

pytestmark = EVERY_START_VARIANT

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


def test_headers_and_signature_verify_with_standardwebhooks(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/signed").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/signed"), webhook_secret=SECRET)
    run = harness.run(job, payload='{"k":"v"}')
    harness.handle(run.id)
    request, _ = httpserver.log[0]
    headers = request.headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == sluice_user_agent() and headers["User-Agent"].startswith("sluice/0.")
    assert headers["X-Sluice-Run-Id"] == run.id and headers["X-Sluice-Job-Id"] == job.id
    assert headers["X-Sluice-Attempt"] == "1" and headers["Idempotency-Key"] == run.id
    assert headers["webhook-id"] == f"{run.id}:1"
    assert Webhook(SECRET).verify(request.get_data(), dict(headers)) == {"k": "v"}


def test_unsigned_without_secret_and_rotated_secret_applies_at_once(harness: Harness,
                                                                    httpserver: HTTPServer) -> None:
    httpserver.expect_request("/u").respond_with_data("nope", status=500)
    job = harness.job(endpoint_url=httpserver.url_for("/u"), retry_strategy="fixed")
    run = harness.run(job)
    harness.handle(run.id)
    assert "webhook-signature" not in httpserver.log[0][0].headers
    harness.update_job(job.id, webhook_secret=SECRET)  # live, not versioned (§5.13)
    harness.promote(run.id)
    harness.handle(run.id)
    second = httpserver.log[1][0]
    assert second.headers["X-Sluice-Attempt"] == "2" and second.headers["webhook-id"] == f"{run.id}:2"
    Webhook(SECRET).verify(second.get_data(), dict(second.headers))


def test_sealed_secrets_sign_and_a_rotation_signs_with_both(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/r").respond_with_data("nope", status=500)
    box = harness.settings.secret_box
    job = harness.job(endpoint_url=httpserver.url_for("/r"), retry_strategy="fixed", webhook_secret=box.seal(SECRET))
    run = harness.run(job)
    harness.handle(run.id)
    first = httpserver.log[0][0]
    assert " " not in first.headers["webhook-signature"]
    Webhook(SECRET).verify(first.get_data(), dict(first.headers))
    harness.update_job(job.id, webhook_secret=box.seal(OTHER_SECRET), webhook_secret_previous=box.seal(SECRET))
    harness.promote(run.id)
    harness.handle(run.id)
    second = httpserver.log[1][0]
    assert len(second.headers["webhook-signature"].split(" ")) == 2
    Webhook(OTHER_SECRET).verify(second.get_data(), dict(second.headers))  # receivers already switched
    Webhook(SECRET).verify(second.get_data(), dict(second.headers))  # receivers not yet switched


@pytest.mark.parametrize(("strategy", "delays", "expected"), [
    ("linear", [], [1, 2, 3]),
    ("fixed", [], [1, 1, 1]),
    ("custom", [5, 7], [5, 7, 7]),
])
def test_retry_strategies(harness: Harness, httpserver: HTTPServer, strategy: str, delays: list[int],
                          expected: list[int]) -> None:
    httpserver.expect_request("/f").respond_with_data("x", status=503)
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/f"), max_attempts=4, retry_strategy=strategy,
                                  retry_delays_secs=delays))
    seen = []
    for attempt in range(1, 5):
        handled = harness.handle(run.id)
        current = harness.get(run.id)
        if attempt < 4:
            assert handled.action == "delayed"
            assert current.next_retry_at is not None and current.started_at is not None
            gap = (current.next_retry_at - current.started_at).total_seconds()
            seen.append(harness.events(run.id, "retry_scheduled")[-1].data["delay_secs"])
            assert seen[-1] - 0.01 <= gap <= seen[-1] + 2
            harness.promote(run.id)
        else:
            assert handled.action == "failed"
    assert sorted(seen) == sorted(expected) and len(seen) == 3
    assert harness.get(run.id).attempt == 4


def test_exponential_retry_is_jittered_within_bounds(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/e").respond_with_data("x", status=500)
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/e"), max_attempts=4))
    delays = []
    for _ in range(3):
        harness.handle(run.id)
        delays.append(max(harness.events(run.id, "retry_scheduled"), key=lambda e: e.data["attempt"]).data)
        harness.promote(run.id)
    for data in delays:
        nominal = 2 ** (data["attempt"] - 1)
        assert nominal * 0.8 <= data["delay_secs"] <= nominal * 1.2


def test_max_attempts_override_wins(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/o").respond_with_data("x", status=500)
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/o"), max_attempts=5), max_attempts_override=1)
    assert harness.handle(run.id).action == "failed"


class TestFallback:
    def test_retryable_primary_falls_back_in_the_same_attempt(self, harness: Harness,
                                                              httpserver: HTTPServer) -> None:
        httpserver.expect_request("/primary").respond_with_data("down", status=503)
        httpserver.expect_request("/fallback").respond_with_json({"from": "fallback"})
        job = harness.job(endpoint_url=httpserver.url_for("/primary"),
                          fallback_endpoint_url=httpserver.url_for("/fallback"), webhook_secret=SECRET)
        run = harness.run(job)
        assert harness.handle(run.id).action == "completed"
        done = harness.get(run.id)
        assert (done.attempt, done.result, done.error) == (1, {"from": "fallback"}, None)
        finished = harness.events(run.id, "attempt_finished")[0].data
        assert finished["used_fallback"] is True and finished["http_status"] == 200
        primary, fallback = httpserver.log[0][0], httpserver.log[1][0]
        assert fallback.headers["webhook-id"] == primary.headers["webhook-id"] == f"{run.id}:1"
        assert fallback.headers["Idempotency-Key"] == run.id and fallback.headers["X-Sluice-Attempt"] == "1"
        Webhook(SECRET).verify(fallback.get_data(), dict(fallback.headers))

    def test_both_failing_report_both_errors_and_the_fallback_class(self, harness: Harness,
                                                                    httpserver: HTTPServer) -> None:
        httpserver.expect_request("/primary").respond_with_data("p", status=500)
        httpserver.expect_request("/fallback").respond_with_data("f", status=404)
        run = harness.run(harness.job(endpoint_url=httpserver.url_for("/primary"), max_attempts=3,
                                      fallback_endpoint_url=httpserver.url_for("/fallback")))
        assert harness.handle(run.id).action == "failed"  # the fallback's 404 is not retryable
        done = harness.get(run.id)
        assert done.error == "primary: HTTP 500: p; fallback: HTTP 404: f"
        assert done.error_class == "client"

    def test_primary_timeout_gets_no_fallback(self, harness: Harness, httpserver: HTTPServer) -> None:
        httpserver.expect_request("/fallback").respond_with_data("ok")
        with RawServer(never_answer) as server:
            run = harness.run(harness.job(endpoint_url=server.url(), max_attempts=1,
                                          fallback_endpoint_url=httpserver.url_for("/fallback")),
                              timeout_secs_override=1)
            assert harness.handle(run.id).action == "timed_out"
        assert httpserver.log == []
        assert harness.events(run.id, "attempt_finished")[0].data["used_fallback"] is False

    def test_non_retryable_primary_gets_no_fallback(self, harness: Harness, httpserver: HTTPServer) -> None:
        httpserver.expect_request("/primary").respond_with_data("bad", status=400)
        httpserver.expect_request("/fallback").respond_with_data("ok")
        run = harness.run(harness.job(endpoint_url=httpserver.url_for("/primary"),
                                      fallback_endpoint_url=httpserver.url_for("/fallback")))
        assert harness.handle(run.id).action == "failed"
        assert [r.path for r, _ in httpserver.log] == ["/primary"]


def _new_version(harness: Harness, job_id: str, **changes: object) -> int:
    """Write the job's next version with ``changes`` and make it the live configuration; its number."""
    with harness.session_factory() as s:
        live = s.get(Job, job_id)
        assert live is not None
        factories.bump_version(s, live, **changes)
        s.commit()
        return live.version + 1


@pytest.mark.parametrize(("policy", "backwards_compatible", "expected_path", "expected_version"), [
    ("pin", False, "/v1", "run's"),
    ("pin", True, "/v1", "run's"),
    ("latest", False, "/v2", "live"),
    ("minor", False, "/v1", "run's"),
    ("minor", True, "/v2", "live"),
])
def test_version_policy_picks_the_execution_settings(harness: Harness, httpserver: HTTPServer, policy: str,
                                                     backwards_compatible: bool, expected_path: str,
                                                     expected_version: str) -> None:
    httpserver.expect_request("/v1").respond_with_data("one")
    httpserver.expect_request("/v2").respond_with_data("two")
    job = harness.job(endpoint_url=httpserver.url_for("/v1"), timeout_secs=30)
    run = harness.run(job)  # created at version 1
    live = _new_version(harness, job.id, endpoint_url=httpserver.url_for("/v2"), timeout_secs=31)
    harness.update_job(job.id, version_policy=policy, backwards_compatible=backwards_compatible)
    assert harness.handle(run.id).action == "completed"
    assert [r.path for r, _ in httpserver.log] == [expected_path]
    started = harness.events(run.id, "attempt_started")[0].data
    assert started["job_version"] == (1 if expected_version == "run's" else live)
    assert started["endpoint_url"] == httpserver.url_for(expected_path)
    done = harness.get(run.id)
    assert (done.job_version, done.job_version_id) == (1, run.job_version_id)  # never changed


def test_pinned_run_without_its_snapshot_is_system_failed(harness: Harness, httpserver: HTTPServer) -> None:
    job = harness.job(endpoint_url=httpserver.url_for("/x"))
    run = harness.run(job, job_version_id="ver_missing00000", job_version=7)
    assert harness.handle(run.id).action == "system_failed"
    done = harness.get(run.id)
    assert (done.status, done.attempt, done.error_class) == ("system_failed", 0, "internal")
    assert done.error is not None and "ver_missing00000" in done.error
    assert httpserver.log == []
    assert set(JOB_DEFAULTS) >= {"endpoint_url", "timeout_secs"}


def test_debug_mode_records_redacted_request_and_response(harness: Harness, httpserver: HTTPServer) -> None:
    def handler(request: Request) -> Response:
        return Response("x" * 5000, 200, headers={"Set-Cookie": "session=abc", "X-Debug": "yes"})

    httpserver.expect_request("/dbg").respond_with_handler(handler)
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/dbg"), webhook_secret=SECRET), debug_mode=True)
    harness.handle(run.id)
    events = harness.events(run.id, "debug")
    assert len(events) == 1
    data = events[0].data
    assert data["call"] == "primary" and data["attempt"] == 1
    assert data["request"]["headers"]["webhook-signature"] == "[redacted]"
    assert data["request"]["headers"]["X-Sluice-Run-Id"] == run.id
    assert data["response"]["status"] == 200
    assert data["response"]["headers"]["set-cookie"] == "[redacted]"
    assert data["response"]["headers"]["x-debug"] == "yes"
    assert len(data["response"]["body"]) == 4096 and data["response"]["body_truncated"] is True
    assert "whsec_" not in str(data)


def test_no_debug_events_without_debug_mode(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/nd").respond_with_data("ok")
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/nd")))
    harness.handle(run.id)
    assert harness.events(run.id, "debug") == []
