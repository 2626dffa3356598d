"""Endpoint connections: keep-alive, pinning to the checked addresses, private CAs, proxies, and stopping a
call in any phase — against real servers, a real CONNECT proxy and a black-holed port on loopback."""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.config import Settings
from shared.egress.addresses import STRICT, AddressPolicy, resolve_checked
from shared.egress.proxies import ProxyRoutes
from shared.errors import ConfigError
from tests.integration import servers
from tests.integration.servers import RawServer, TunnelProxy
from worker.call_result import CallResult
from worker.http import CallAborted, HttpClient, Resolver
from worker.transport import trust_store

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
OPEN = AddressPolicy(allow_private=True)
RESOLVE = functools.partial(resolve_checked, policy=OPEN)  # every server here is on loopback


def call(client: HttpClient, url: str, *, timeout: float = 5.0, resolve: Resolver = RESOLVE,
         **kwargs: object) -> CallResult:
    return client.post(url, b'{"n": 1}', {"User-Agent": "sluice/test"}, deadline=time.monotonic() + timeout,
                       resolve=resolve, now=lambda: NOW, timeout_secs=max(1, round(timeout)), **kwargs)  # type: ignore[arg-type]


def pinned(host: str, port: int, *ips: str) -> Resolver:
    """A resolver that says ``host`` is at ``ips`` (as the address policy would after checking them)."""
    return lambda url: (host, port, list(ips))


@pytest.fixture
def client() -> Iterator[HttpClient]:
    http = HttpClient(trust_store(None))
    yield http
    http.close()


@pytest.fixture
def raw() -> Iterator[list[RawServer]]:
    started: list[RawServer] = []
    yield started
    for server in started:
        server.stop()


def start(raw: list[RawServer], handler: servers.Handler, tls: ssl.SSLContext | None = None, *,
          host: str = "127.0.0.1", port: int = 0) -> RawServer:
    server = RawServer(handler, tls, host=host, port=port).__enter__()
    raw.append(server)
    return server


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return servers.make_self_signed(tmp_path, ["sink.test"])


def tls_server_context(files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*files)
    return context


# --- keep-alive ----------------------------------------------------------------------------------------

def test_calls_share_one_kept_alive_connection(client: HttpClient, raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive())
    results = [call(client, server.url()) for _ in range(3)]
    assert [r.outcome.kind for r in results] == ["success"] * 3
    assert (server.connections, len(server.requests)) == (1, 3)
    assert results[0].timings.connect_ms is not None
    assert [r.timings.connect_ms for r in results[1:]] == [0, 0]  # §5.16: 0 on a reused connection


def test_private_ca_from_sluice_ca_bundle_and_kept_alive_tls(raw: list[RawServer], client: HttpClient,
                                                              tls_files: tuple[Path, Path]) -> None:
    server = start(raw, servers.keep_alive(), tls_server_context(tls_files))
    url, resolve = f"https://sink.test:{server.port}/hook", pinned("sink.test", server.port, "127.0.0.1")
    refused = call(client, url, resolve=resolve)  # system CAs only
    assert refused.outcome.error is not None
    assert refused.outcome.error.startswith("connection: TLS failure: certificate verify failed")

    settings = Settings.from_env({"DATABASE_URL": "postgresql://db/sluice", "SLUICE_CA_BUNDLE": str(tls_files[0])})
    trusting = HttpClient.configured(settings, {}, pool_size=2)
    try:
        results = [call(trusting, url, resolve=resolve) for _ in range(3)]
    finally:
        trusting.close()
    assert [r.outcome.kind for r in results] == ["success"] * 3
    assert [r.timings.connect_ms for r in results[1:]] == [0, 0]
    assert server.connections == 2  # the refused handshake, then one connection for three calls


def test_an_unreadable_ca_bundle_stops_the_worker_at_start(tmp_path: Path) -> None:
    for bundle in (tmp_path / "missing.pem", tmp_path / "empty.pem"):
        if bundle.name == "empty.pem":
            bundle.write_text("not a certificate\n")
        with pytest.raises(ConfigError, match="SLUICE_CA_BUNDLE"):
            settings = Settings.from_env({"DATABASE_URL": "postgresql://db/sluice", "SLUICE_CA_BUNDLE": str(bundle)})
            HttpClient.configured(settings, {}, pool_size=1)


def test_a_connection_the_server_dropped_while_idle_is_replaced(client: HttpClient, raw: list[RawServer]) -> None:
    # The server reads the second request of each connection and closes without answering, as one whose
    # idle timeout fires just as the request arrives: the request goes again on a new connection.
    server = start(raw, servers.keep_alive(answers_per_connection=1))
    first, second = call(client, server.url()), call(client, server.url())
    assert (first.outcome.kind, second.outcome.kind) == ("success", "success")
    assert (server.connections, len(server.requests)) == (2, 3)
    assert second.timings.connect_ms is not None and second.timings.ttfb_ms is not None


def test_a_fresh_connection_closing_without_answer_is_not_retried(client: HttpClient, raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive(answers_per_connection=0))
    result = call(client, server.url())
    assert result.outcome.error == "connection: connection closed before a full response"
    assert len(server.requests) == 1


def test_a_truncated_body_never_leaves_its_connection_for_the_next_call(client: HttpClient,
                                                                         raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive(b"x" * 100))
    cut = call(client, server.url(), max_body=10)
    assert (cut.body, cut.truncated) == (b"x" * 10, True)
    whole = call(client, server.url())
    assert (whole.body, whole.truncated, server.connections) == (b"x" * 100, False, 2)


def test_a_final_1xx_never_leaves_its_connection_for_the_next_call(client: HttpClient,
                                                                    raw: list[RawServer]) -> None:
    answers = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nnot http any more",
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]

    def handler(conn: socket.socket, server: RawServer) -> None:
        servers.read_request(conn, server)
        conn.sendall(answers.pop(0))
        server.stopped.wait()

    server = start(raw, handler)
    assert call(client, server.url()).outcome.error_class == "invalid_response"
    assert call(client, server.url()).body == b"ok"
    assert server.connections == 2


def test_threads_share_the_pool(client: HttpClient, raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive())
    kinds: list[str] = []

    def worker() -> None:
        kinds.extend(call(client, server.url()).outcome.kind for _ in range(5))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kinds == ["success"] * 30 and server.connections <= 6


# --- pinning -------------------------------------------------------------------------------------------

def test_a_changed_resolution_never_reuses_a_connection_to_the_old_address(client: HttpClient,
                                                                             raw: list[RawServer]) -> None:
    old = start(raw, servers.keep_alive(b"old"))
    new = start(raw, servers.keep_alive(b"new"), host="127.0.0.2", port=old.port)
    url = f"http://api.test:{old.port}/hook"
    assert call(client, url, resolve=pinned("api.test", old.port, "127.0.0.1")).body == b"old"
    assert call(client, url, resolve=pinned("api.test", old.port, "127.0.0.2")).body == b"new"
    assert call(client, url, resolve=pinned("api.test", old.port, "127.0.0.1")).body == b"old"
    assert (old.connections, new.connections) == (1, 1)


def test_an_address_no_longer_approved_is_not_reached_through_the_pool(client: HttpClient,
                                                                      raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive())
    url = f"http://api.test:{server.port}/hook"
    assert call(client, url, resolve=pinned("api.test", server.port, "127.0.0.1")).outcome.kind == "success"
    moved = call(client, url, resolve=pinned("api.test", server.port, "127.0.0.3"))  # nothing listens there
    assert moved.outcome.error == "connection: connection refused"
    assert len(server.requests) == 1


def test_ipv6_literal(client: HttpClient, raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive(), host="::1")
    result = call(client, server.url())
    assert result.outcome.kind == "success"
    assert f"Host: [::1]:{server.port}\r\n".encode() in server.requests[0]


def test_tls_names_are_checked_per_host_even_on_one_address(client: HttpClient, raw: list[RawServer],
                                                           tls_files: tuple[Path, Path]) -> None:
    server = start(raw, servers.keep_alive(), tls_server_context(tls_files))
    trusting = HttpClient(trust_store(str(tls_files[0])))
    try:
        ok = call(trusting, f"https://sink.test:{server.port}/", resolve=pinned("sink.test", server.port, "127.0.0.1"))
        # The certificate is for sink.test only: a connection verified for it must not carry other.test's call.
        other = call(trusting, f"https://other.test:{server.port}/",
                     resolve=pinned("other.test", server.port, "127.0.0.1"))
        again = call(trusting, f"https://sink.test:{server.port}/",
                     resolve=pinned("sink.test", server.port, "127.0.0.1"))
    finally:
        trusting.close()
    assert ok.outcome.kind == "success" and again.timings.connect_ms == 0
    assert (other.outcome.kind, other.outcome.error_class) == ("retryable", "connection")
    assert other.outcome.error is not None and "mismatch" in other.outcome.error.lower()


# --- proxies -------------------------------------------------------------------------------------------

def proxied(tls_files: tuple[Path, Path] | None, env: dict[str, str]) -> HttpClient:
    return HttpClient(trust_store(str(tls_files[0]) if tls_files else None), ProxyRoutes.from_env(env))


def test_https_goes_through_a_connect_tunnel(raw: list[RawServer], tls_files: tuple[Path, Path]) -> None:
    server = start(raw, servers.keep_alive(), tls_server_context(tls_files))
    with TunnelProxy() as proxy:
        http = proxied(tls_files, {"HTTPS_PROXY": proxy.url})
        try:
            results = [call(http, f"https://sink.test:{server.port}/hook",
                            resolve=pinned("sink.test", server.port, "127.0.0.1")) for _ in range(2)]
        finally:
            http.close()
    assert [r.outcome.kind for r in results] == ["success", "success"]
    assert proxy.seen == [f"CONNECT sink.test:{server.port}"]  # one tunnel, kept alive; TLS verified end to end
    assert results[1].timings.connect_ms == 0


def test_http_goes_to_the_proxy_in_absolute_form(raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive())
    with TunnelProxy() as proxy:
        http = proxied(None, {"http_proxy": proxy.url, "HTTP_PROXY": "http://127.0.0.1:9"})  # lowercase wins
        try:
            result = call(http, f"http://user:pw@sink.test:{server.port}/hook?a=1",
                          resolve=pinned("sink.test", server.port, "127.0.0.1"))
        finally:
            http.close()
    assert result.outcome.kind == "success"
    assert proxy.seen == [f"POST http://sink.test:{server.port}/hook?a=1"]
    assert server.requests[0].startswith(b"POST /hook?a=1 HTTP/1.1\r\n")
    assert b"Authorization" not in server.requests[0]


def test_no_proxy_goes_direct(raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive())
    with TunnelProxy() as proxy:
        http = proxied(None, {"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,.test"})
        try:
            result = call(http, f"http://sink.test:{server.port}/hook",
                          resolve=pinned("sink.test", server.port, "127.0.0.1"))
        finally:
            http.close()
    assert result.outcome.kind == "success" and proxy.seen == [] and len(server.requests) == 1


def test_the_address_policy_still_applies_behind_a_proxy() -> None:
    def private(host: str, port: int) -> list[str]:
        return ["10.1.2.3"]

    with TunnelProxy() as proxy:
        http = proxied(None, {"HTTPS_PROXY": proxy.url})
        try:
            result = call(http, "https://internal.example/hook",
                          resolve=functools.partial(resolve_checked, policy=STRICT, resolver=private))
        finally:
            http.close()
    assert result.outcome.error == "client: destination refused by address policy: host resolves to a private address"
    assert proxy.seen == []


def test_proxy_failures_are_connection_errors(raw: list[RawServer], tls_files: tuple[Path, Path]) -> None:
    server = start(raw, servers.keep_alive(), tls_server_context(tls_files))
    resolve = pinned("sink.test", server.port, "127.0.0.1")
    with TunnelProxy(refuse=True) as proxy:
        http = proxied(tls_files, {"HTTPS_PROXY": proxy.url})
        try:
            refused = call(http, f"https://sink.test:{server.port}/hook", resolve=resolve)
        finally:
            http.close()
    assert refused.outcome.kind == "retryable" and refused.outcome.error is not None
    assert refused.outcome.error.startswith("connection: proxy failure: ") and "403" in refused.outcome.error
    http = proxied(tls_files, {"HTTPS_PROXY": f"http://127.0.0.1:{servers.closed_port()}"})
    try:
        down = call(http, f"https://sink.test:{server.port}/hook", resolve=resolve)
    finally:
        http.close()
    assert down.outcome.error == "connection: proxy failure: connection refused"
    assert server.connections == 0


# --- stopping a call in any phase ---------------------------------------------------------------------

@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port whose connects never complete: a listener that never accepts, its backlog full."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


def silent_tls_peer(conn: socket.socket, server: RawServer) -> None:
    server.stopped.wait()  # accepts TCP, never answers the TLS handshake


def abort_after(secs: float) -> threading.Event:
    event = threading.Event()
    threading.Timer(secs, event.set).start()
    return event


def test_cancel_while_connecting(client: HttpClient, black_hole: int) -> None:
    started = time.monotonic()
    with pytest.raises(CallAborted):
        call(client, f"http://127.0.0.1:{black_hole}/", timeout=30, should_abort=abort_after(0.3).is_set)
    assert time.monotonic() - started < 1.3


def test_deadline_while_connecting(client: HttpClient, black_hole: int) -> None:
    started = time.monotonic()
    result = call(client, f"http://127.0.0.1:{black_hole}/", timeout=1.0)
    assert abs(time.monotonic() - started - 1.0) < 0.3
    assert result.outcome.error == "timeout: no response within 1 s" and result.timings.connect_ms is None


def test_cancel_during_the_tls_handshake(client: HttpClient, raw: list[RawServer]) -> None:
    server = start(raw, silent_tls_peer)
    started = time.monotonic()
    with pytest.raises(CallAborted):
        call(client, f"https://127.0.0.1:{server.port}/", timeout=30, should_abort=abort_after(0.3).is_set)
    assert time.monotonic() - started < 1.3


def test_deadline_during_the_tls_handshake(client: HttpClient, raw: list[RawServer]) -> None:
    server = start(raw, silent_tls_peer)
    started = time.monotonic()
    result = call(client, f"https://127.0.0.1:{server.port}/", timeout=1.0)
    assert abs(time.monotonic() - started - 1.0) < 0.3
    assert result.outcome.error == "timeout: no response within 1 s"


def test_the_watchdog_leaves_a_finished_calls_connection_alone(client: HttpClient, raw: list[RawServer]) -> None:
    server = start(raw, servers.keep_alive())
    assert call(client, server.url(), timeout=0.5).outcome.kind == "success"
    time.sleep(0.8)  # past the first call's deadline while its connection idles in the pool
    again = call(client, server.url())
    assert (again.outcome.kind, again.timings.connect_ms, server.connections) == ("success", 0, 1)


def test_cancel_reaches_a_call_on_a_reused_connection(client: HttpClient, raw: list[RawServer]) -> None:
    def answer_once_then_hang(conn: socket.socket, server: RawServer) -> None:
        servers.read_request(conn, server)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        while servers.read_request(conn, server):  # every later request on this connection waits forever
            server.stopped.wait()

    server = start(raw, answer_once_then_hang)
    assert call(client, server.url()).outcome.kind == "success"
    started = time.monotonic()
    with pytest.raises(CallAborted):
        call(client, server.url(), timeout=30, should_abort=abort_after(0.3).is_set)
    assert time.monotonic() - started < 1.3
    assert server.connections == 1  # the hanging request went out on the kept-alive connection


def test_calls_leave_no_descriptors_behind(client: HttpClient, raw: list[RawServer]) -> None:
    kept, closing = start(raw, servers.keep_alive()), start(raw, servers.respond(b"HTTP/1.1 200 OK\r\n\r\nbye"))
    refused = f"http://127.0.0.1:{servers.closed_port()}/"

    def open_descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    for url in (kept.url(), closing.url(), refused):  # warm up: one pooled connection per server
        call(client, url)
    before = open_descriptors()
    for _ in range(50):
        for url in (kept.url(), closing.url(), refused):
            call(client, url)
    assert open_descriptors() <= before
