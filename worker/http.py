"""One endpoint call through ``requests``: pinned addresses, keep-alive, one deadline, cancel (§5.2, §5.3, §5.16).

``HttpClient.post`` resolves the URL once through the injected resolver (which applies the address policy,
§10.1), sends one POST over a pooled keep-alive connection to one of the addresses it returned (Host, SNI
and the certificate check use the URL's host name; ``worker.transport``), reads at most ``max_body`` bytes
of the response and classifies what happened into an ``Outcome``. Redirects are never followed and TLS is
always verified, against the system's CAs plus ``SLUICE_CA_BUNDLE``. Behind a proxy (``HTTPS_PROXY``,
``HTTP_PROXY``, ``NO_PROXY``) the connection goes to the proxy, after the same check of the destination.

One client per worker process, shared by its threads (endpoint calls and webhook deliveries alike). The only
exception ``post`` raises on purpose is ``CallAborted`` (cancel, §5.17); anything else escaping is a
Sluice-side bug for the caller to record as ``internal``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol, cast
from urllib.parse import SplitResult, urlsplit

import requests
from requests.utils import requote_uri
from urllib3 import BaseHTTPResponse
from urllib3.exceptions import ConnectTimeoutError

from shared.config import Settings
from shared.egress.addresses import AddressRefused, ResolutionFailed
from shared.egress.proxies import ProxyRoutes
from shared.runs.retries import NON_RETRYABLE, RETRYABLE
from worker.call_result import CallResult, CallTimings, answered_call, failed_call
from worker.failures import TIMED_OUT, Failure, describe
from worker.lookup import Resolver, resolve_within
from worker.transport import Exchange, PinnedAdapter, bind, trust_store, unbind
from worker.watchdog import CallAborted, DeadlinePassed, Guard, Watchdog

__all__ = ["CallAborted", "HttpClient", "PostFunction", "Resolver", "post", "user_agent"]

MAX_BODY = 1 << 20
READ_BYTES = 64 * 1024
# Headers the transport owns; a caller's copy would corrupt framing or the Host/SNI pairing.
_OWN_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


@functools.cache
def user_agent() -> str:
    """``sluice/<installed package version>`` (§5.2, §5.15); ``sluice/0+unknown`` from an uninstalled tree."""
    try:
        return f"sluice/{importlib.metadata.version('sluice')}"
    except importlib.metadata.PackageNotFoundError:
        return "sluice/0+unknown"


class PostFunction(Protocol):
    """``HttpClient.post``'s signature: what the Runner and webhook delivery are given."""

    def __call__(self, url: str, body: bytes, headers: dict[str, str], *, deadline: float, resolve: Resolver,
                 now: Callable[[], datetime], should_abort: Callable[[], bool] | None = None,
                 max_body: int = MAX_BODY, timeout_secs: int | None = None) -> CallResult: ...


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else round((end - start) * 1000)


def _timings(exchange: Exchange | None, done: float | None = None) -> CallTimings:
    if exchange is None:
        return CallTimings()
    connect = 0 if exchange.reused else _ms(exchange.connect_started, exchange.established)
    return CallTimings(connect, _ms(exchange.sent, exchange.head_read), _ms(exchange.head_read, done))


def _prepare(parts: SplitResult, host: str, port: int, body: bytes,
             headers: dict[str, str]) -> tuple[requests.PreparedRequest, str]:
    """The POST to send and its request target: the checked (IDNA, lowercase) host in the URL and ``Host``;
    user-info is never sent.

    Built field by field rather than with ``PreparedRequest.prepare``, whose URL re-parsing, cookie jar and
    header checks cost more than the rest of a call's Python work: the URL has passed the address policy
    (no whitespace or control characters), and ``http.client`` still refuses an illegal header.
    """
    default_port = 443 if parts.scheme.lower() == "https" else 80
    authority = f"[{host}]" if ":" in host else host
    if port != default_port:
        authority = f"{authority}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.isascii():
        target = requote_uri(target)
    request = requests.PreparedRequest()
    request.method = "POST"
    request.url = f"{parts.scheme.lower()}://{authority}{target}"
    request.headers = {"Host": authority, "Content-Length": str(len(body))}  # type: ignore[assignment]
    request.headers.update((name, value) for name, value in headers.items() if name.lower() not in _OWN_HEADERS)
    request.body = body
    return request, target


def _read_body(response: BaseHTTPResponse, max_body: int) -> tuple[bytes, bool]:
    """At most ``max_body`` bytes of the body and whether more came; stops reading as soon as it knows."""
    if response.status < 200:
        # A 1xx as the final answer (101 switches protocols): nothing more to read on this connection.
        _discard(response)
        return b"", False
    length = response.length_remaining  # None when chunked or delimited by the connection closing
    limit = max_body if length is not None and length > max_body else max_body + 1
    # With a Content-Length, stop at it: the read that ends the body also returns the connection to its pool.
    want = limit if length is None else min(length, limit)
    data = bytearray()
    while len(data) < want:
        chunk = response.read(min(READ_BYTES, want - len(data)))
        if not chunk:
            break
        data += chunk
    truncated = len(data) > max_body or (length is not None and length > max_body)
    if truncated:
        _discard(response)  # unread bytes remain, so the connection cannot carry another request
    return bytes(data[:max_body]), truncated


def _discard(response: BaseHTTPResponse) -> None:
    """Close the response's connection and give its pool slot back (closed: the next user reconnects)."""
    response.close()
    response.release_conn()


def _failed(failure: Failure, timeout_secs: int, exchange: Exchange | None) -> CallResult:
    reason = failure.reason if failure.reason is not None else f"no response within {timeout_secs} s"
    return failed_call(failure.kind, failure.error_class, reason, _timings(exchange))


def _failure_of(exc: Exception, guard: Guard) -> Failure | None:
    """What ``exc`` means for the call: a timeout if the deadline stopped it, else ``describe``'s reading.
    Raises ``CallAborted`` if a cancel stopped it (the socket error is only the watchdog's doing)."""
    if isinstance(exc, DeadlinePassed):
        return TIMED_OUT
    try:
        guard.raise_if_stopped()
    except DeadlinePassed:
        return TIMED_OUT
    return describe(exc)


class HttpClient:
    """Endpoint calls and webhook deliveries of one worker process: a keep-alive pool and a watchdog.

    ``tls`` must verify certificates and host names (verification cannot be turned off); ``proxies`` says
    which calls go through a proxy; ``pool_size`` is how many idle connections each host address keeps
    (the process's thread count: more can never be in use at once).
    """

    def __init__(self, tls: ssl.SSLContext, proxies: ProxyRoutes | None = None, *, pool_size: int = 8) -> None:
        self._adapter = PinnedAdapter(tls, pool_size)
        self._proxies = proxies or ProxyRoutes({})
        self._watchdog = Watchdog()

    @classmethod
    def configured(cls, settings: Settings, environ: Mapping[str, str], *, pool_size: int) -> HttpClient:
        """The worker's client: ``SLUICE_CA_BUNDLE`` from ``settings``, proxies from ``environ``."""
        return cls(trust_store(settings.ca_bundle), ProxyRoutes.from_env(environ), pool_size=pool_size)

    def close(self) -> None:
        self._watchdog.close()
        self._adapter.close()

    def post(self, url: str, body: bytes, headers: dict[str, str], *, deadline: float, resolve: Resolver,
             now: Callable[[], datetime], should_abort: Callable[[], bool] | None = None,
             max_body: int = MAX_BODY, timeout_secs: int | None = None) -> CallResult:
        """POST ``body`` to ``url`` and classify the result (§5.3); never follows redirects.

        ``deadline`` is a ``time.monotonic()`` value covering DNS, connect, TLS, send, wait and read; past it
        the outcome is retryable ``timeout: no response within <timeout_secs> s`` (``timeout_secs`` defaults
        to the time left, rounded up). ``should_abort`` (quick and thread-safe: the watchdog calls it) is
        polled about every 0.25 s; when it returns true the call stops and ``CallAborted`` is raised. ``now``
        dates an HTTP-date ``Retry-After``.
        """
        if timeout_secs is None:
            timeout_secs = max(1, math.ceil(deadline - time.monotonic()))
        guard = self._watchdog.watch(deadline, should_abort)
        exchange: Exchange | None = None
        try:
            try:
                host, port, ips = resolve_within(resolve, url, guard)
            except AddressRefused as exc:
                return failed_call(NON_RETRYABLE, "client", f"destination refused by address policy: {exc}")
            except ResolutionFailed:
                return failed_call(RETRYABLE, "connection", "DNS resolution failed")
            parts = urlsplit(url)
            if not ips:
                return failed_call(RETRYABLE, "connection", "DNS resolution failed")
            if parts.scheme.lower() not in ("http", "https"):  # the resolver refuses these; never guess
                return failed_call(NON_RETRYABLE, "client", "destination refused by address policy: not http(s)")
            host = host.strip("[]").rstrip(".")
            request, target = _prepare(parts, host, port, body, headers)
            exchange = Exchange(guard, host, port, target)
            token = bind(exchange)
            try:
                response = self._send(request, exchange, ips, self._proxies.proxy_for(url))
                content, truncated = _read_body(response, max_body)
            finally:
                unbind(token)
            stopped_by = guard.detach()  # the connection may be back in the pool: the watchdog must not touch it
            if stopped_by is not None:
                raise stopped_by()
            done = time.monotonic()
        except CallAborted:
            raise
        except Exception as exc:
            failure = _failure_of(exc, guard)
            if failure is None:
                raise
            return _failed(failure, timeout_secs, exchange)
        finally:
            self._watchdog.release(guard)
        return answered_call(response.status, dict(response.headers.itermerged()), content, truncated,
                             _timings(exchange, done), now)

    def _send(self, request: requests.PreparedRequest, exchange: Exchange, ips: list[str],
              proxy: str | None) -> BaseHTTPResponse:
        """Send through the proxy, or to the first checked address that accepts a connection, in order.

        Each address gets an equal share of the time left, so one black-holed address cannot starve the
        others; a connection refused or timed out sent nothing, so the next address may take the request.
        """
        addresses: list[str | None] = [None] if proxy else list(ips)
        proxies = {urlsplit(request.url or "").scheme: proxy} if proxy else None
        for index, address in enumerate(addresses):
            share = exchange.guard.time_left() / (len(addresses) - index)
            exchange.next_try(address, time.monotonic() + share)
            try:
                return self._send_once(request, exchange, proxies)
            except ConnectTimeoutError:  # NewConnectionError included
                if index == len(addresses) - 1:
                    raise
        raise AssertionError("unreachable: the last address re-raises")

    def _send_once(self, request: requests.PreparedRequest, exchange: Exchange,
                   proxies: dict[str, str] | None) -> BaseHTTPResponse:
        """One send; again on a fresh connection if a kept-alive one turns out closed by the server.

        A server may close an idle connection just as a request goes out on it; nothing came back, so
        the request is sent again on a new connection (delivery is at least once; endpoints deduplicate on
        ``Idempotency-Key``). A failure on a fresh connection is final.
        """
        while True:
            try:
                response = self._adapter.send(request, stream=True, proxies=proxies, timeout=exchange.guard.time_left())
                return cast(BaseHTTPResponse, response)  # PinnedAdapter.build_response
            except requests.ConnectionError as exc:
                exchange.guard.raise_if_stopped()
                failure = describe(exc)
                if not (exchange.reused and exchange.head_read is None and failure is not None
                        and failure.error_class == "connection"):
                    raise
                exchange.next_try(exchange.address, exchange.connect_deadline)


@functools.cache
def default_client() -> HttpClient:
    """A client for callers not handed one (tests, tools): system CAs, proxies from the environment."""
    return HttpClient(trust_store(None), ProxyRoutes.from_env(os.environ))


def post(url: str, body: bytes, headers: dict[str, str], *, deadline: float, resolve: Resolver,
         now: Callable[[], datetime], should_abort: Callable[[], bool] | None = None,
         max_body: int = MAX_BODY, timeout_secs: int | None = None) -> CallResult:
    """``default_client().post``: the default ``PostFunction`` where no client is passed in."""
    return default_client().post(url, body, headers, deadline=deadline, resolve=resolve, now=now,
                                 should_abort=should_abort, max_body=max_body, timeout_secs=timeout_secs)
