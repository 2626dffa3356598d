"""The connection layer under ``requests`` for endpoint calls: pinned addresses, keep-alive, phase marks.

``PinnedAdapter`` is a ``requests`` transport adapter whose urllib3 pools are keyed by the *checked IP
address* (plus the host name for TLS), never by a name urllib3 would resolve: a call pinned to address A
can only take a connection made to A, so neither a DNS change nor a policy change can be bypassed by an
old pooled connection, while ``Host``, SNI and the certificate check use the URL's host name. Through a
proxy the pools are the proxy's, as ``requests`` builds them (the proxy makes the final connection).

The adapter's connections report to the ``Exchange`` of the call in progress (a context variable set
around each send, so it is per thread): where they may connect and until when, the socket the watchdog
must watch, and when each phase ended (connect start, established, request sent, response head read).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.retry import Retry

from shared.errors import ConfigError
from worker.watchdog import Guard, SocketHandle

# Pools kept (least recently used dropped, closing its idle connections). A pool is one checked address of
# one host name; each keeps at most ``pool_size`` idle connections.
MAX_POOLS = 64


@dataclass
class Exchange:
    """One endpoint call as its connections see it; phase instants are ``time.monotonic()`` values."""

    guard: Guard
    host: str  # the URL's host name: Host header, SNI, certificate check
    port: int
    target: str  # the request target: path and query
    address: str | None = None  # the checked IP this try connects to; None through a proxy
    connect_deadline: float = 0.0  # this address's share of the time left
    connect_started: float | None = None  # the first connect of the call (failed addresses included)
    established: float | None = None
    reused: bool = False
    sent: float | None = None
    head_read: float | None = None

    def next_try(self, address: str | None, connect_deadline: float) -> None:
        self.address, self.connect_deadline = address, connect_deadline
        self.established = self.sent = self.head_read = None
        self.reused = False


_exchange: ContextVar[Exchange] = ContextVar("sluice_exchange")


def bind(exchange: Exchange) -> Token[Exchange]:
    """Make ``exchange`` the calling thread's call in progress, until ``unbind(token)``."""
    return _exchange.set(exchange)


def unbind(token: Token[Exchange]) -> None:
    _exchange.reset(token)


def _current() -> Exchange:
    try:
        return _exchange.get()
    except LookupError:
        raise RuntimeError("endpoint connections are used only inside HttpClient.post") from None


def trust_store(ca_bundle: str | None) -> ssl.SSLContext:
    """The system's trusted CAs plus those in ``ca_bundle`` (a PEM file, ``SLUICE_CA_BUNDLE``)."""
    context = ssl.create_default_context()
    if ca_bundle:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"SLUICE_CA_BUNDLE: cannot load {ca_bundle!r}: {exc}") from exc
    return context


class _HeadLines:
    """The response's socket file while the head is read: notes a line the peer cut off by closing."""

    def __init__(self, fp: Any) -> None:
        self.fp = fp
        self.cut = False

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self.fp.readline(limit)
        if not line.endswith(b"\n") and (limit < 0 or len(line) < limit):  # a full-length line is LineTooLong
            self.cut = True
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fp, name)


def _message(lines: list[bytes]) -> http.client.HTTPMessage:
    """The header lines (the blank line that ends them last) as ``http.client`` hands them on; a folded line
    continues the header before it, and a line without a colon is dropped."""
    fields: list[list[str]] = []
    for line in lines[:-1]:
        text = line.decode("iso-8859-1")
        if text[:1] in (" ", "\t"):
            if fields:
                fields[-1][1] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if colon:
            fields.append([name, value.strip()])
    message = http.client.HTTPMessage()
    for name, value in fields:
        message[name] = value
    return message


class _Response(http.client.HTTPResponse):
    """``http.client``'s response with its own reading of the head, for two reasons:

    - a peer closing inside the status line or the headers is a connection closed early (``http.client``
      takes whatever came as a whole head: a crash after ``HTTP/1.1 200 OK`` would read as an empty success);
    - the headers are split into fields directly: ``http.client`` parses them as a MIME message through the
      ``email`` package, about a tenth of the CPU of a whole call.

    The status line, line limits and interim (``100 Continue``) heads are read as ``http.client`` reads them.
    """

    def begin(self) -> None:
        if self.headers is not None:
            return
        fp, self.fp = self.fp, _HeadLines(self.fp)  # type: ignore[assignment]
        try:
            version, status, reason = self._read_status()  # type: ignore[attr-defined]
            while status == http.client.CONTINUE:
                http.client._read_headers(self.fp)  # type: ignore[attr-defined]
                version, status, reason = self._read_status()  # type: ignore[attr-defined]
            lines = http.client._read_headers(self.fp)  # type: ignore[attr-defined]
        finally:
            head, self.fp = self.fp, fp
        if head.cut:  # type: ignore[attr-defined]
            raise http.client.IncompleteRead(b"")
        if not version.startswith("HTTP/1.") and version != "HTTP/0.9":
            raise http.client.UnknownProtocol(version)
        self.version = 10 if version in ("HTTP/1.0", "HTTP/0.9") else 11
        self.code = self.status = status
        self.reason = reason.strip()
        self.headers = self.msg = _message(lines)
        self.chunked = (self.headers.get("transfer-encoding") or "").lower() == "chunked"
        self.chunk_left = None
        length = None if self.chunked else self.headers.get("content-length")
        self.length = int(length) if length and length.isdigit() else None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or status < 200 or self._method == "HEAD":
            self.length = 0  # type: ignore[attr-defined]
        # Neither chunked nor a length: the body ends when the server closes the connection.
        self.will_close = self._check_close() or (not self.chunked and self.length is None)  # type: ignore[attr-defined]


class _TracedConnection(HTTPConnection):
    """Connects only where the exchange allows, under the watchdog, and marks each phase."""

    response_class = _Response
    _fresh = False
    _body: bytes | None = None  # sent together with the request head

    def _new_conn(self) -> socket.socket:
        exchange = _current()
        host = self._dns_host.strip("[]")
        if exchange.address is not None:  # a pinned pool's host is the checked IP itself: nothing to look up
            if host != exchange.address:
                raise RuntimeError(f"pool for {host} used for a call pinned to {exchange.address}")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            infos: list[tuple[Any, ...]] = [(family, socket.SOCK_STREAM, 0, "", (host, self.port))]
        else:  # the proxy's address, from the operator's own configuration
            try:
                infos = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
        last: OSError = OSError("no address")
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                exchange.guard.attach(SocketHandle(sock))  # before connecting: a cancel must reach the connect
                exchange.guard.raise_if_stopped()
            except BaseException:
                sock.close()
                raise
            if exchange.connect_started is None:
                exchange.connect_started = time.monotonic()
            try:
                sock.settimeout(max(0.001, min(exchange.connect_deadline, exchange.guard.deadline) - time.monotonic()))
                sock.connect(address)
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(max(0.001, exchange.guard.deadline - time.monotonic()))
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return sock
        if isinstance(last, TimeoutError):
            raise ConnectTimeoutError(self, f"connect to {self.host} timed out") from last
        raise NewConnectionError(self, f"failed to establish a new connection: {last}") from last

    def connect(self) -> None:
        super().connect()
        self._fresh = True
        _current().established = time.monotonic()

    def request(self, method: str, url: str, body: Any = None, headers: Any = None, **kwargs: Any) -> None:
        exchange = _current()
        exchange.guard.raise_if_stopped()
        exchange.reused = self.sock is not None and not self._fresh
        if exchange.reused:  # a new connection's socket is watched since _new_conn
            exchange.guard.attach(SocketHandle(self.sock))
        self.timeout = max(0.001, exchange.guard.deadline - time.monotonic())  # the send's socket timeout
        # urllib3 sends the head and then the body: two packets, two wake-ups of the server. The body (with
        # its Content-Length already among the headers) goes out with the head instead, in one send.
        self._body = body
        try:
            super().request(method, url, body=None, headers=headers, **kwargs)
        finally:
            self._body = None
        self._fresh = False
        exchange.sent = time.monotonic()

    def send(self, data: Any) -> None:
        if self._body:
            data, self._body = data + self._body, None
        super().send(data)

    def getresponse(self) -> Any:
        response = super().getresponse()
        _current().head_read = time.monotonic()
        return response


class _TracedHTTPSConnection(_TracedConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _TracedConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TracedHTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


class PinnedAdapter(HTTPAdapter):
    """A ``requests`` adapter whose direct connections go to the exchange's checked address only.

    Thread-safe (urllib3's pools are); no retries (a call is one request, §5.2), no redirects; every TLS
    connection is verified with ``tls`` (which must verify certificates and host names).
    """

    def __init__(self, tls: ssl.SSLContext, pool_size: int) -> None:
        if tls.verify_mode != ssl.CERT_REQUIRED or not tls.check_hostname:
            raise ValueError("TLS verification cannot be turned off")
        self._tls = tls
        self._proxy_lock = threading.Lock()  # requests' lookup-then-create would race between threads
        super().__init__(pool_connections=MAX_POOLS, pool_maxsize=pool_size,
                         max_retries=Retry(total=False, redirect=False))

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOL_CLASSES  # type: ignore[assignment]

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        with self._proxy_lock:
            manager = super().proxy_manager_for(proxy, proxy_ssl_context=self._tls, **proxy_kwargs)
            manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Mapping[str, str] | None = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        exchange = _current()
        scheme = "https" if request.url.lower().startswith("https:") else "http"
        # server_hostname: SNI and certificate check on the URL's name, whichever address the pool connects to.
        pool_kwargs = {"ssl_context": self._tls, "cert_reqs": "CERT_REQUIRED", "server_hostname": exchange.host}
        manager: PoolManager
        if exchange.address is None:
            proxy = (proxies or {}).get(scheme)
            if proxy is None:
                raise RuntimeError("an unpinned exchange must go through a proxy")
            manager = self.proxy_manager_for(proxy)
            return manager.connection_from_host(exchange.host, exchange.port, scheme, pool_kwargs)
        return self.poolmanager.connection_from_host(exchange.address, exchange.port, scheme, pool_kwargs)

    def request_url(self, request: Any, proxies: Mapping[str, str] | None) -> str:
        exchange = _current()
        return exchange.target if exchange.address is not None else super().request_url(request, proxies)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing to set per request: every pool verifies with the adapter's TLS context."""

    def build_response(self, req: Any, resp: Any) -> Any:
        """The urllib3 response itself, its body unread: the client reads at most ``max_body`` bytes of it,
        and endpoint cookies are never kept (a ``requests.Response`` starts a cookie jar for each call)."""
        return resp
