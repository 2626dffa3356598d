"""Endpoint calls against real servers on 127.0.0.1: every §5.3 outcome row, deadlines, abort, TLS."""

from __future__ import annotations

import functools
import json
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from shared.egress.addresses import STRICT, AddressPolicy, AddressRefused, ResolutionFailed, resolve_checked
from tests.integration import servers
from tests.integration.servers import RawServer
from worker.call_result import CallResult
from worker.http import CallAborted, HttpClient, PostFunction, post
from worker.transport import trust_store

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PAYLOAD = b'{"order": 42, "note": "caf\xc3\xa9"}'
HEADERS = {"Content-Type": "application/json", "User-Agent": "sluice/0.1.0", "X-Sluice-Run-Id": "run-1",
           "X-Sluice-Job-Id": "job-1", "X-Sluice-Attempt": "2", "Idempotency-Key": "run-1"}
# Production wiring, with private addresses allowed because every sink here is on loopback.
RESOLVE = functools.partial(resolve_checked, policy=AddressPolicy(allow_private=True))


def call(url: str, *, timeout: float = 5.0, body: bytes = PAYLOAD, post_with: PostFunction = post,
         **kwargs: object) -> CallResult:
    kwargs.setdefault("resolve", RESOLVE)
    return post_with(url, body, HEADERS, deadline=time.monotonic() + timeout, now=lambda: NOW,
                     timeout_secs=max(1, round(timeout)), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def sink() -> Iterator[HTTPServer]:
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def raw() -> Iterator[list[RawServer]]:
    """Start servers with ``raw.append(RawServer(...).__enter__())``; all are stopped at teardown."""
    started: list[RawServer] = []
    yield started
    for server in started:
        server.stop()


def start(raw: list[RawServer], handler: servers.Handler, tls: ssl.SSLContext | None = None) -> RawServer:
    server = RawServer(handler, tls).__enter__()
    raw.append(server)
    return server


# --- responses ----------------------------------------------------------------------------------------

def test_200_json_sends_exact_body_and_headers(sink: HTTPServer) -> None:
    body = PAYLOAD + bytes(range(256))  # every byte value survives untouched
    sink.expect_request("/hook", method="POST", query_string="a=1").respond_with_json({"ok": True})
    result = call(sink.url_for("/hook?a=1"), body=body)
    assert result.outcome.kind == "success" and result.outcome.error is None
    assert result.outcome.error_class is None and result.outcome.http_status == 200
    assert result.status == 200 and json.loads(result.body) == {"ok": True} and not result.truncated
    assert result.headers["content-type"] == "application/json"
    request, _ = sink.log[0]
    assert request.get_data() == body
    for name, value in HEADERS.items():
        assert request.headers[name] == value
    assert request.headers["Host"] == f"127.0.0.1:{sink.port}"
    assert request.headers["Content-Length"] == str(len(body))
    assert result.retry_after_secs is None


def test_204_has_no_body(sink: HTTPServer) -> None:
    sink.expect_request("/hook").respond_with_data("", status=204)
    result = call(sink.url_for("/hook"))
    assert (result.outcome.kind, result.status, result.body) == ("success", 204, b"")
    assert result.timings.transfer_ms is not None


def test_2xx_non_json_body_is_returned_raw(sink: HTTPServer) -> None:
    sink.expect_request("/hook").respond_with_data("accepted, thanks", status=202, content_type="text/plain")
    result = call(sink.url_for("/hook"))
    assert (result.outcome.kind, result.status, result.body) == ("success", 202, b"accepted, thanks")


@pytest.mark.parametrize(("status", "kind", "error_class"), [
    (500, "retryable", "server"), (502, "retryable", "server"), (408, "retryable", "server"),
    (425, "retryable", "server"), (429, "retryable", "rate_limited"), (404, "non_retryable", "client"),
    (400, "non_retryable", "client"),
])
def test_error_statuses(sink: HTTPServer, status: int, kind: str, error_class: str) -> None:
    sink.expect_request("/hook").respond_with_data('{"error":"nope"}', status=status)
    result = call(sink.url_for("/hook"))
    assert result.outcome.kind == kind and result.outcome.error_class == error_class
    assert result.outcome.error == f'HTTP {status}: {{"error":"nope"}}' and result.outcome.http_status == status


def test_error_text_is_capped_at_one_kib(sink: HTTPServer) -> None:
    sink.expect_request("/hook").respond_with_data("é" * 2000, status=500)
    result = call(sink.url_for("/hook"))
    assert result.outcome.error == "HTTP 500: " + "é" * 512
    assert len(result.body) == 4000


def test_retry_after_seconds_on_503_and_429(sink: HTTPServer) -> None:
    sink.expect_ordered_request("/hook").respond_with_data("busy", status=503, headers={"Retry-After": "120"})
    sink.expect_ordered_request("/hook").respond_with_data("slow down", status=429, headers={"Retry-After": "7"})
    assert call(sink.url_for("/hook")).retry_after_secs == 120
    assert call(sink.url_for("/hook")).retry_after_secs == 7


def test_retry_after_http_date_uses_now(sink: HTTPServer) -> None:
    when = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    sink.expect_request("/hook").respond_with_data("busy", status=503, headers={"Retry-After": when})
    assert call(sink.url_for("/hook")).retry_after_secs == 90


def test_retry_after_ignored_on_other_statuses(sink: HTTPServer) -> None:
    sink.expect_request("/hook").respond_with_data("x", status=500, headers={"Retry-After": "60"})
    assert call(sink.url_for("/hook")).retry_after_secs is None


def test_redirect_is_not_followed(sink: HTTPServer) -> None:
    sink.expect_request("/hook").respond_with_data("", status=302, headers={"Location": "/elsewhere"})
    sink.expect_request("/elsewhere").respond_with_data("should not be reached")
    result = call(sink.url_for("/hook"))
    assert (result.outcome.kind, result.outcome.error_class) == ("non_retryable", "invalid_response")
    assert result.outcome.error == "HTTP 302: " and result.status == 302
    assert [req.path for req, _ in sink.log] == ["/hook"]


@pytest.mark.parametrize("raw_response", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
    b"HTTP/1.1 600 Beyond\r\nContent-Length: 3\r\n\r\nodd",
])
def test_1xx_and_out_of_range_statuses_are_invalid(raw: list[RawServer], raw_response: bytes) -> None:
    server = start(raw, servers.respond_then_hang(raw_response))  # a hanging peer proves we do not wait
    started = time.monotonic()
    result = call(server.url())
    assert time.monotonic() - started < 1
    status = int(raw_response.split()[1])
    assert (result.outcome.kind, result.outcome.error_class, result.status) == (
        "non_retryable", "invalid_response", status)
    assert result.outcome.error is not None and result.outcome.error.startswith(f"HTTP {status}: ")


def test_100_continue_before_the_final_response_is_skipped(raw: list[RawServer]) -> None:
    server = start(raw, servers.respond(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    result = call(server.url())
    assert (result.outcome.kind, result.status, result.body) == ("success", 200, b"ok")


@pytest.mark.parametrize("raw_response", [
    b"HTTP/1.1 099 Below\r\nContent-Length: 0\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n\r\n",
])
def test_a_status_line_that_is_not_http_is_an_invalid_response(raw: list[RawServer], raw_response: bytes) -> None:
    server = start(raw, servers.respond_then_hang(raw_response))
    result = call(server.url())
    assert result.outcome == result.outcome.__class__(
        "non_retryable", "invalid_response", "invalid_response: malformed response: malformed status line")


@pytest.mark.parametrize(("raw_response", "reason"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     "content-length contained multiple unmatching values (5, 6)"),
    (b"HTTP/2 200\r\nContent-Length: 2\r\n\r\nok", "unsupported protocol HTTP/2"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", "response head too large"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "got more than 100 headers"),
])
def test_a_malformed_head_is_an_invalid_response(raw: list[RawServer], raw_response: bytes, reason: str) -> None:
    result = call(start(raw, servers.respond(raw_response)).url())
    assert (result.outcome.kind, result.outcome.error_class) == ("non_retryable", "invalid_response")
    assert result.outcome.error == f"invalid_response: malformed response: {reason}"


def test_response_header_fields(raw: list[RawServer]) -> None:
    """Repeats are joined, a folded line continues its header, a line without a colon is dropped, and the
    length still frames the body when it follows such a line."""
    server = start(raw, servers.respond_then_hang(
        b"HTTP/1.1 503 Busy\r\nX-Tag: a\r\nRetry-After:\t 30 \r\nX-Note: first\r\n  second\r\nno colon here\r\n"
        b"x-tag: b\r\nContent-Length: 4\r\n\r\nbusy"))  # a hanging peer: only the length ends the body
    result = call(server.url())
    assert result.headers == {"x-tag": "a, b", "retry-after": "30", "x-note": "first second", "content-length": "4"}
    assert (result.status, result.body, result.retry_after_secs) == (503, b"busy", 30)


@pytest.mark.parametrize("length", [b"-1", b"4x"])
def test_a_length_that_is_not_a_number_reads_until_close(raw: list[RawServer], length: bytes) -> None:
    server = start(raw, servers.respond(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nuntil the end"))
    assert call(server.url()).body == b"until the end"


def test_garbage_is_an_invalid_response(raw: list[RawServer]) -> None:
    server = start(raw, servers.respond(b"SSH-2.0-OpenSSH\r\n\r\n"))
    result = call(server.url())
    assert result.outcome == result.outcome.__class__(
        "non_retryable", "invalid_response", "invalid_response: malformed response: malformed status line")


# --- body framing and truncation ------------------------------------------------------------------------

def test_chunked_and_close_delimited_bodies(raw: list[RawServer]) -> None:
    chunked = start(raw, servers.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"))
    assert call(chunked.url()).body == b"hello, world"
    until_close = start(raw, servers.respond(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"))
    assert call(until_close.url()).body == b"until the end"


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b"c" * 1024 + b"\r\n200000\r\n",
])
def test_oversized_body_is_truncated_without_waiting_for_the_rest(raw: list[RawServer], head: bytes) -> None:
    server = start(raw, servers.respond_then_hang(head + b"z" * 300_000))  # never finishes the body
    started = time.monotonic()
    result = call(server.url(), timeout=5, max_body=100_000)
    assert time.monotonic() - started < 1
    assert result.outcome.kind == "success" and result.truncated and len(result.body) == 100_000
    assert result.timings.transfer_ms is not None


def test_body_exactly_at_the_cap_is_not_truncated(sink: HTTPServer) -> None:
    sink.expect_request("/hook").respond_with_data(b"y" * 1000)
    result = call(sink.url_for("/hook"), max_body=1000)
    assert len(result.body) == 1000 and not result.truncated


# --- connection failures -------------------------------------------------------------------------------

def test_connection_refused() -> None:
    result = call(f"http://127.0.0.1:{servers.closed_port()}/hook")
    assert result.outcome == result.outcome.__class__("retryable", "connection", "connection: connection refused")
    assert result.status is None and result.timings.connect_ms is None


def test_connection_reset(raw: list[RawServer]) -> None:
    server = start(raw, servers.reset_after_request)
    result = call(server.url())
    assert (result.outcome.kind, result.outcome.error) == ("retryable", "connection: connection reset")


@pytest.mark.parametrize("handler", [
    servers.close_without_answer,
    servers.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"),
    servers.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"),
    servers.respond(b"HTTP/1.1 500 Internal"),
])
def test_closed_before_a_full_response(raw: list[RawServer], handler: servers.Handler) -> None:
    result = call(start(raw, handler).url())
    assert result.outcome.kind == "retryable" and result.outcome.error_class == "connection"
    assert result.outcome.error == "connection: connection closed before a full response"
    assert result.timings.connect_ms is not None


def test_tries_checked_addresses_in_order_and_never_resolves_again(sink: HTTPServer) -> None:
    sink.expect_request("/hook").respond_with_data("ok")
    seen: list[str] = []

    def resolver(url: str) -> tuple[str, int, list[str]]:
        seen.append(url)
        # 127.0.0.2 has no listener on this port (the sink binds 127.0.0.1 only): refused, then next.
        return "sink.test", sink.port, ["127.0.0.2", "127.0.0.1"]

    url = f"http://user:secret@sink.test:{sink.port}/hook"
    result = call(url, resolve=resolver)
    assert result.outcome.kind == "success" and seen == [url]
    request, _ = sink.log[0]
    assert request.headers["Host"] == f"sink.test:{sink.port}" and "Authorization" not in request.headers


# --- deadline and abort --------------------------------------------------------------------------------

def test_timeout_when_server_never_answers(raw: list[RawServer]) -> None:
    server = start(raw, servers.never_answer)
    started = time.monotonic()
    result = call(server.url(), timeout=1.0)
    assert abs(time.monotonic() - started - 1.0) < 0.3
    assert result.outcome == result.outcome.__class__("retryable", "timeout", "timeout: no response within 1 s")
    assert result.timings.connect_ms is not None and result.timings.ttfb_ms is None
    assert server.requests and server.requests[0].endswith(PAYLOAD)


def test_timeout_when_body_is_too_slow(raw: list[RawServer]) -> None:
    server = start(raw, servers.trickle_body(0.1))
    started = time.monotonic()
    result = call(server.url(), timeout=1.0)
    assert abs(time.monotonic() - started - 1.0) < 0.3
    assert result.outcome.error_class == "timeout" and result.outcome.error == "timeout: no response within 1 s"
    assert result.timings.ttfb_ms is not None and result.timings.transfer_ms is None


def test_deadline_already_passed() -> None:
    result = post("http://127.0.0.1:9/hook", b"", {}, deadline=time.monotonic() - 1, resolve=RESOLVE,
                  now=lambda: NOW, timeout_secs=300)
    assert result.outcome.error == "timeout: no response within 300 s"


def test_abort_stops_waiting_within_a_second(raw: list[RawServer]) -> None:
    server = start(raw, servers.never_answer)
    abort = threading.Event()
    threading.Timer(0.3, abort.set).start()
    started = time.monotonic()
    with pytest.raises(CallAborted):
        call(server.url(), timeout=30, should_abort=abort.is_set)
    assert time.monotonic() - started < 1.3


def test_abort_during_a_slow_name_lookup() -> None:
    def slow_resolver(url: str) -> tuple[str, int, list[str]]:
        time.sleep(3)
        return "slow.test", 80, ["127.0.0.1"]

    started = time.monotonic()
    with pytest.raises(CallAborted):
        call("http://slow.test/hook", resolve=slow_resolver, should_abort=lambda: time.monotonic() - started > 0.3)
    assert time.monotonic() - started < 1.3
    result = call("http://slow.test/hook", timeout=0.5, resolve=slow_resolver)
    assert result.outcome.error_class == "timeout"  # DNS is inside the deadline too


# --- address policy ------------------------------------------------------------------------------------

def test_address_refused_is_a_client_error(sink: HTTPServer) -> None:
    result = call(sink.url_for("/hook"), resolve=functools.partial(resolve_checked, policy=STRICT))
    assert result.outcome == result.outcome.__class__(
        "non_retryable", "client", "client: destination refused by address policy: host is a private address")
    assert not sink.log  # nothing was sent


def test_userinfo_is_stripped_from_quoted_urls() -> None:
    def refusing(url: str) -> tuple[str, int, list[str]]:
        raise AddressRefused(f"cannot call {url}")

    result = call("https://alice:pw@example.com/x", resolve=refusing)
    assert result.outcome.error == "client: destination refused by address policy: cannot call https://example.com/x"


def test_resolution_failure_is_a_connection_error() -> None:
    def nxdomain(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    resolver = functools.partial(resolve_checked, policy=AddressPolicy(allow_private=True), resolver=nxdomain)
    result = call("http://nowhere.invalid/hook", resolve=resolver)
    assert result.outcome == result.outcome.__class__("retryable", "connection", "connection: DNS resolution failed")

    def raising(url: str) -> tuple[str, int, list[str]]:
        raise ResolutionFailed("no such host")

    assert call("http://nowhere.invalid/hook", resolve=raising).outcome.error == "connection: DNS resolution failed"


# --- timings -------------------------------------------------------------------------------------------

def test_timings_are_plausible(raw: list[RawServer]) -> None:
    parts = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst", b"-last"]
    server = start(raw, servers.paced(0.2, parts, gap_secs=0.15))
    result = call(server.url())
    assert result.outcome.kind == "success" and result.body == b"first-last"
    timings = result.timings
    assert timings.connect_ms is not None and 0 <= timings.connect_ms < 100
    assert timings.ttfb_ms is not None and 180 <= timings.ttfb_ms < 500
    assert timings.transfer_ms is not None and 130 <= timings.transfer_ms < 450


# --- TLS -----------------------------------------------------------------------------------------------

@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    return servers.make_self_signed(tmp_path, ["sink.test", "127.0.0.1"])


def tls_server(raw: list[RawServer], files: tuple[Path, Path], handler: servers.Handler) -> RawServer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)
    return start(raw, handler, tls=context)


def test_self_signed_certificate_fails_verification(raw: list[RawServer], tls_files: tuple[Path, Path]) -> None:
    server = tls_server(raw, tls_files, servers.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    result = call(server.url())
    assert (result.outcome.kind, result.outcome.error_class) == ("retryable", "connection")
    assert result.outcome.error is not None
    assert result.outcome.error.startswith("connection: TLS failure: certificate verify failed")
    assert not server.requests


def test_tls_uses_url_host_for_sni_and_checked_ip_for_tcp(raw: list[RawServer],
                                                           tls_files: tuple[Path, Path]) -> None:
    sni_seen: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    context.sni_callback = lambda sock, name, ctx: sni_seen.append(name)  # type: ignore[assignment,func-returns-value]
    server = start(raw, servers.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), tls=context)
    client = HttpClient(trust_store(str(tls_files[0])))  # the certificate's CA, as SLUICE_CA_BUNDLE gives it

    def resolver(url: str) -> tuple[str, int, list[str]]:
        return "sink.test", server.port, ["127.0.0.1"]

    try:
        result = call(f"https://sink.test:{server.port}/hook", resolve=resolver, post_with=client.post)
        assert result.outcome.kind == "success" and result.body == b"ok" and sni_seen == ["sink.test"]
        assert result.timings.connect_ms is not None
        # Same certificate, another name: the hostname check (not the IP) decides.
        other = call(f"https://other.test:{server.port}/hook", post_with=client.post,
                     resolve=lambda url: ("other.test", server.port, ["127.0.0.1"]))
    finally:
        client.close()
    assert other.outcome.error is not None and other.outcome.error.startswith("connection: TLS failure:")
    assert "mismatch" in other.outcome.error.lower()


def test_tls_verification_cannot_be_disabled() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="cannot be turned off"):
        HttpClient(context)


def test_sends_exactly_the_expected_header_names(sink: HTTPServer) -> None:
    """The endpoint sees the caller's headers plus Host, Content-Length and Accept-Encoding, nothing else."""
    def echo(request: Request) -> Response:
        return Response(json.dumps(sorted(request.headers.keys())), content_type="application/json")

    sink.expect_request("/hook").respond_with_handler(echo)
    names = json.loads(call(sink.url_for("/hook")).body)
    assert names == sorted(["Host", "Content-Length", "Accept-Encoding", *HEADERS])
