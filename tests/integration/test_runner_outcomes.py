"""Every outcome row of CONTRACT §5.3, end to end through the Runner against real local HTTP servers."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from tests.integration.runner_harness import EVERY_START_VARIANT, Harness
from tests.integration.servers import RawServer, close_without_answer, closed_port, never_answer

pytestmark = EVERY_START_VARIANT

TRACE_KEYS = {"queue_wait_ms", "dequeue_ms", "connect_ms", "ttfb_ms", "transfer_ms", "dispatch_ms", "total_ms"}


def _types(h: Harness, run_id: str) -> list[str]:
    return [e.type for e in h.events(run_id)]


def test_2xx_json_completes_with_parsed_result_events_and_trace(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/ok", method="POST").respond_with_json({"done": True, "n": 3})
    job = harness.job(endpoint_url=httpserver.url_for("/ok"))
    run = harness.run(job, payload='{"a":1}')

    handled = harness.handle(run.id)

    assert (handled.action, handled.run_id, handled.attempt) == ("completed", run.id, 1)
    done = harness.get(run.id)
    assert done.status == "completed" and done.attempt == 1
    assert done.result == {"done": True, "n": 3}
    assert done.error is None and done.error_class is None
    assert done.started_at is not None and done.finished_at is not None and done.heartbeat_at is not None
    assert done.next_retry_at is None
    trace = done.execution_trace
    assert trace is not None and set(trace) == TRACE_KEYS
    assert all(isinstance(trace[k], int) and trace[k] >= 0 for k in TRACE_KEYS)
    assert trace["total_ms"] >= trace["dispatch_ms"]
    assert sorted(_types(harness, run.id)) == ["attempt_finished", "attempt_started", "state_change", "state_change"]
    changes = [(e.data["from"], e.data["to"]) for e in harness.events(run.id, "state_change")]
    assert sorted(changes) == [("executing", "completed"), ("queued", "executing")]
    started = harness.events(run.id, "attempt_started")[0].data
    assert started == {"attempt": 1, "job_version": 1, "endpoint_url": httpserver.url_for("/ok")}
    finished = harness.events(run.id, "attempt_finished")[0].data
    assert finished["outcome"] == "success" and finished["http_status"] == 200
    assert finished["error"] is None and finished["error_class"] is None
    assert finished["used_fallback"] is False and finished["result_truncated"] is False
    assert isinstance(finished["duration_ms"], int)
    request, _ = httpserver.log[0]
    assert request.get_data() == b'{"a":1}'


@pytest.mark.parametrize(("body", "content_type", "expected"), [
    (b"plain text", "text/plain", "plain text"),
    (b"", "text/plain", None),
    (b'"a json string"', "application/json", "a json string"),
    (b"[1, 2.5, null]", "application/json", [1, 2.5, None]),
    (b"\xff\xfeok", "text/plain", "\ufffd\ufffdok"),
    (b'{"x": NaN}', "application/json", '{"x": NaN}'),
    (b'{"nul": "a\\u0000b"}', "application/json", {"nul": "a\ufffdb"}),
    # Nested deeper than anything stored as JSON (near the interpreter's limit, with and without a NUL
    # that needs cleaning): kept as text, and the run still completes.
    (b"[" * 980 + b'"\\u0000"' + b"]" * 980, "application/json", "[" * 980 + '"\\u0000"' + "]" * 980),
    (b"[" * 129 + b"]" * 129, "application/json", "[" * 129 + "]" * 129),
    (b"[" * 128 + b"]" * 128, "application/json", json.loads("[" * 128 + "]" * 128)),
])
def test_2xx_body_becomes_result(harness: Harness, httpserver: HTTPServer, body: bytes, content_type: str,
                                 expected: object) -> None:
    httpserver.expect_request("/r").respond_with_response(Response(body, 200, content_type=content_type))
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/r")))
    harness.handle(run.id)
    done = harness.get(run.id)
    assert done.status == "completed"
    assert done.result == expected


def test_2xx_body_over_1_mib_is_kept_truncated(harness: Harness, httpserver: HTTPServer) -> None:
    big = b"x" * ((1 << 20) + 10)
    httpserver.expect_request("/big").respond_with_data(big, content_type="text/plain")
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/big")))
    harness.handle(run.id)
    done = harness.get(run.id)
    assert done.status == "completed"
    assert isinstance(done.result, str) and len(done.result) == 1 << 20
    assert harness.events(run.id, "attempt_finished")[0].data["result_truncated"] is True


def test_timeout_is_retryable_and_ends_timed_out(harness: Harness) -> None:
    with RawServer(never_answer) as server:
        run = harness.run(harness.job(endpoint_url=server.url(), max_attempts=1), timeout_secs_override=1)
        handled = harness.handle(run.id)
    assert handled.action == "timed_out"
    done = harness.get(run.id)
    assert (done.status, done.error_class, done.error) == ("timed_out", "timeout", "timeout: no response within 1 s")
    finished = harness.events(run.id, "attempt_finished")[0].data
    assert finished["outcome"] == "retryable" and finished["http_status"] is None
    assert done.execution_trace is not None and done.execution_trace["ttfb_ms"] is None


@pytest.mark.parametrize(("make_url", "error"), [
    (lambda: f"http://127.0.0.1:{closed_port()}/x", "connection: connection refused"),
])
def test_connection_refused_fails_after_last_attempt(harness: Harness, make_url, error: str) -> None:  # type: ignore[no-untyped-def]
    run = harness.run(harness.job(endpoint_url=make_url(), max_attempts=1))
    harness.handle(run.id)
    done = harness.get(run.id)
    assert (done.status, done.error_class, done.error) == ("failed", "connection", error)


def test_connection_closed_before_response(harness: Harness) -> None:
    with RawServer(close_without_answer) as server:
        run = harness.run(harness.job(endpoint_url=server.url(), max_attempts=1))
        harness.handle(run.id)
    done = harness.get(run.id)
    assert (done.status, done.error_class) == ("failed", "connection")
    assert done.error == "connection: connection closed before a full response"


@pytest.mark.parametrize(("status", "error_class"), [(500, "server"), (503, "server"), (408, "server"),
                                                     (425, "server"), (429, "rate_limited")])
def test_retryable_statuses_schedule_a_retry_then_fail(harness: Harness, httpserver: HTTPServer, status: int,
                                                       error_class: str) -> None:
    httpserver.expect_request("/s").respond_with_data("oops", status=status)
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/s"), max_attempts=2, retry_strategy="fixed"))

    assert harness.handle(run.id).action == "delayed"
    first = harness.get(run.id)
    assert (first.status, first.attempt, first.error_class) == ("delayed", 1, error_class)
    assert first.error == f"HTTP {status}: oops"
    assert first.next_retry_at is not None and first.finished_at is None
    retry = harness.events(run.id, "retry_scheduled")[0].data
    assert retry["attempt"] == 1 and retry["delay_secs"] == 1 and retry["retry_after_secs"] is None

    harness.promote(run.id)
    assert harness.handle(run.id).action == "failed"
    last = harness.get(run.id)
    assert (last.status, last.attempt, last.error_class) == ("failed", 2, error_class)
    assert last.error == f"HTTP {status}: oops"
    assert last.next_retry_at is None or last.next_retry_at <= last.finished_at  # type: ignore[operator]
    assert len(httpserver.log) == 2


def test_retry_after_is_a_floor_for_the_next_delay(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rl").respond_with_data("slow down", status=429, headers={"Retry-After": "120"})
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/rl"), max_attempts=3, retry_strategy="fixed"))
    harness.handle(run.id)
    done = harness.get(run.id)
    assert done.status == "delayed" and done.next_retry_at is not None and done.started_at is not None
    wait = (done.next_retry_at - done.started_at).total_seconds()
    assert 119 <= wait <= 125
    retry = harness.events(run.id, "retry_scheduled")[0].data
    assert retry["retry_after_secs"] == 120 and retry["delay_secs"] == 1


def test_a_retry_after_of_thousands_of_digits_is_the_cap(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/rl").respond_with_data("", status=503, headers={"Retry-After": "9" * 5000})
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/rl"), max_attempts=3, retry_strategy="fixed"))
    harness.handle(run.id)
    done = harness.get(run.id)
    assert (done.status, done.error_class) == ("delayed", "server")
    assert harness.events(run.id, "retry_scheduled")[0].data["retry_after_secs"] == 86400


@pytest.mark.parametrize(("status", "error_class"), [(400, "client"), (404, "client"), (302, "invalid_response"),
                                                     (101, "invalid_response")])
def test_non_retryable_statuses_fail_at_once(harness: Harness, httpserver: HTTPServer, status: int,
                                             error_class: str) -> None:
    if status == 101:
        raw = b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n"
        with RawServer(lambda conn, server: (conn.recv(65536), conn.sendall(raw))) as server:
            run = harness.run(harness.job(endpoint_url=server.url(), max_attempts=5))
            harness.handle(run.id)
    else:
        httpserver.expect_request("/n").respond_with_data("no", status=status, headers={"Location": "http://x/"})
        run = harness.run(harness.job(endpoint_url=httpserver.url_for("/n"), max_attempts=5))
        harness.handle(run.id)
    done = harness.get(run.id)
    assert (done.status, done.attempt, done.error_class) == ("failed", 1, error_class)
    assert harness.events(run.id, "attempt_finished")[0].data["outcome"] == "non_retryable"
    assert harness.events(run.id, "retry_scheduled") == []


def test_address_policy_refusal_at_call_time_is_a_client_failure(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/p").respond_with_data("should not be called")
    job = harness.job(endpoint_url=httpserver.url_for("/p"), max_attempts=5)
    run = harness.run(job)
    harness.runner._settings = harness.settings.with_overrides(allow_private_endpoints=False)
    harness.handle(run.id)
    done = harness.get(run.id)
    assert (done.status, done.error_class) == ("failed", "client")
    assert done.error is not None and done.error.startswith("client: destination refused by address policy")
    assert httpserver.log == []


def test_allowlisted_network_is_called_when_private_endpoints_are_refused(harness: Harness,
                                                                        httpserver: HTTPServer) -> None:
    httpserver.expect_request("/p").respond_with_data("ok")
    url = f"http://127.0.0.1:{httpserver.port}/p"
    refused = harness.run(harness.job(endpoint_url=url, max_attempts=5))
    allowed = harness.run(harness.job(endpoint_url=url, max_attempts=5))
    strict = harness.settings.with_overrides(allow_private_endpoints=False)
    harness.runner._settings = strict.with_overrides(allowed_private_endpoints=("10.0.0.0/8",))
    harness.handle(refused.id)
    assert (harness.get(refused.id).status, harness.get(refused.id).error_class) == ("failed", "client")
    harness.runner._settings = strict.with_overrides(allowed_private_endpoints=("127.0.0.0/8", "::1"))
    harness.handle(allowed.id)
    assert harness.get(allowed.id).status == "completed"
    assert len(httpserver.log) == 1


def test_failed_attempt_clears_nothing_but_completion_clears_the_error(harness: Harness,
                                                                      httpserver: HTTPServer) -> None:
    responses = iter([Response("bad", 500), Response('{"ok":1}', 200, content_type="application/json")])
    httpserver.expect_request("/flaky").respond_with_handler(lambda request: next(responses))
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/flaky"), retry_strategy="fixed"))
    harness.handle(run.id)
    assert harness.get(run.id).error == "HTTP 500: bad"
    harness.promote(run.id)
    harness.handle(run.id)
    done = harness.get(run.id)
    assert (done.status, done.attempt, done.error, done.error_class, done.result) == ("completed", 2, None, None,
                                                                                      {"ok": 1})
    started = [e.data["attempt"] for e in harness.events(run.id, "attempt_started")]
    assert started == [1, 2]


def test_retry_schedule_respects_now(harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/d").respond_with_data("x", status=500)
    run = harness.run(harness.job(endpoint_url=httpserver.url_for("/d"), retry_strategy="custom",
                                  retry_delays_secs=[30], max_attempts=2))
    harness.handle(run.id)
    done = harness.get(run.id)
    assert done.next_retry_at is not None and done.started_at is not None
    assert timedelta(seconds=29) < done.next_retry_at - done.started_at < timedelta(seconds=32)
    data = harness.events(run.id, "retry_scheduled")[0].data
    assert data["delay_secs"] == 30
    assert json.dumps(data)  # JSON-serialisable as stored
