"""One endpoint call with a hard deadline, exact phase timings and no DNS rebinding (§5.2, §5.3, §5.16).

``post`` resolves the URL once through the injected resolver (which applies the address policy, §10.1),
connects only to the addresses it returned, verifies TLS against the URL's host, sends one request
with ``Connection: close`` and classifies what happened into an ``Outcome``. Redirects are never
followed. The only exception it raises on purpose is ``CallAborted`` (cancel, §5.17); anything else
escaping is a Sluice-side bug for the caller to record as ``internal``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import ipaddress
import math
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias
from urllib.parse import SplitResult, quote, urlsplit

from shared.egress.addresses import AddressRefused, ResolutionFailed
from shared.runs.retries import (
    NON_RETRYABLE,
    RETRYABLE,
    SUCCESS,
    Outcome,
    classify_status,
    http_error_text,
    parse_retry_after,
)
from worker.http_wire import (
    Budget,
    CallAborted,
    DeadlineExceeded,
    MalformedResponse,
    ResponseReader,
    WireError,
    open_socket,
    read_response,
    send_all,
    start_tls,
)

__all__ = ["CallAborted", "CallResult", "CallTimings", "Resolver", "post"]

Resolver: TypeAlias = Callable[[str], tuple[str, int, list[str]]]
"""``url -> (host, port, checked IPs)``; raises ``AddressRefused`` or ``ResolutionFailed``."""

# Headers the wire format owns; a caller's copy would corrupt framing or the Host/SNI pairing.
_OWN_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]*@")
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")



@functools.cache
def user_agent() -> str:
    """``sluice/<installed package version>`` (§5.2, §5.15); ``sluice/0+unknown`` from an uninstalled tree."""
    try:
        return f"sluice/{importlib.metadata.version('sluice')}"
    except importlib.metadata.PackageNotFoundError:
        return "sluice/0+unknown"

@dataclass(frozen=True)
class CallTimings:
    """Whole milliseconds per phase (§5.16); ``None`` for a phase that did not complete.

    connect: TCP connect start → TCP (+TLS) established; ttfb: request fully sent → first response
    byte; transfer: first byte → body fully read.
    """

    connect_ms: int | None = None
    ttfb_ms: int | None = None
    transfer_ms: int | None = None


@dataclass(frozen=True)
class CallResult:
    """What one call produced. ``body`` holds at most ``max_body`` bytes; ``truncated`` says more came."""

    outcome: Outcome
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # names lowercased, repeats joined by ", "
    body: bytes = b""
    truncated: bool = False
    timings: CallTimings = field(default_factory=CallTimings)
    retry_after_secs: int | None = None  # parsed Retry-After, only on 429 and 503


@functools.cache
def _default_tls_context() -> ssl.SSLContext:
    # Loading the CA store costs milliseconds; build it once, on first use rather than at import.
    return ssl.create_default_context()


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else round((end - start) * 1000)


def _failure(kind: str, error_class: str, reason: str, timings: CallTimings | None = None) -> CallResult:
    error = _USERINFO.sub(r"\1", f"{error_class}: {reason}")
    return CallResult(Outcome(kind, error_class, error), timings=timings or CallTimings())


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _resolve_within(resolve: Resolver, url: str, budget: Budget) -> tuple[str, int, list[str]]:
    """Run the resolver within the budget.

    ``getaddrinfo`` cannot be interrupted, so a name lookup runs on a daemon thread we stop waiting for
    at the deadline or on abort. IP literals need no lookup and skip the thread (the hot path).
    """
    host = urlsplit(url).hostname or ""
    if _is_ip_literal(host):
        budget.slice()
        return resolve(url)
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = resolve(url)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="sluice-resolve", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(budget.slice())
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _build_request(parts: SplitResult, host: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    """The request head + body. User-info in the URL is never sent."""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not target.isascii():
        target = quote(target, safe="!#$%&'()*+,/:;=?@[]~")
    if _UNSAFE_TARGET.search(target):
        raise ValueError("request target contains whitespace or control characters")
    host_header = f"[{host}]" if ":" in host else host
    if port != (443 if parts.scheme.lower() == "https" else 80):
        host_header = f"{host_header}:{port}"
    lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(body)}",
             "Connection: close"]
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError(f"invalid header {name!r}")  # header injection is a Sluice-side bug
        if name.lower() not in _OWN_HEADERS:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post(url: str, body: bytes, headers: dict[str, str], *, deadline: float, resolve: Resolver,
         now: Callable[[], datetime], should_abort: Callable[[], bool] | None = None,
         max_body: int = 1 << 20, timeout_secs: int | None = None,
         ssl_context: ssl.SSLContext | None = None) -> CallResult:
    """POST ``body`` to ``url`` and classify the result (§5.3); never follows redirects.

    ``deadline`` is a ``time.monotonic()`` value covering DNS, connect, TLS, send, wait and read; past it
    the outcome is retryable ``timeout: no response within <timeout_secs> s`` (``timeout_secs`` defaults
    to the time left, rounded up). ``should_abort`` is polled about every 0.25 s; when it returns true
    the call stops and ``CallAborted`` is raised. ``ssl_context`` must verify certificates and host
    names (default: the system trust store); verification cannot be turned off. ``now`` dates an
    HTTP-date ``Retry-After``.
    """
    budget = Budget(deadline, should_abort)
    if timeout_secs is None:
        timeout_secs = max(1, math.ceil(deadline - time.monotonic()))
    context = ssl_context or _default_tls_context()
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise ValueError("TLS verification cannot be turned off (CONTRACT §10.2)")
    connect_start = established = sent = done = None
    reader: ResponseReader | None = None

    def timings() -> CallTimings:
        first = reader.first_byte_at if reader is not None else None
        return CallTimings(_ms(connect_start, established), _ms(sent, first), _ms(first, done))

    try:
        try:
            host, port, ips = _resolve_within(resolve, url, budget)
        except AddressRefused as exc:
            return _failure(NON_RETRYABLE, "client", f"destination refused by address policy: {exc}")
        except ResolutionFailed:
            return _failure(RETRYABLE, "connection", "DNS resolution failed")
        if not ips:
            return _failure(RETRYABLE, "connection", "DNS resolution failed")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):  # the resolver refuses these; never send plaintext by accident
            return _failure(NON_RETRYABLE, "client", "destination refused by address policy: not http(s)")
        host = host.strip("[]").rstrip(".")
        request = _build_request(parts, host, port, body, headers)
        connect_start = time.monotonic()
        sock = open_socket(ips, port, budget)
        try:
            if scheme == "https":
                sock = start_tls(sock, host, context, budget)
            established = time.monotonic()
            send_all(sock, request, budget)
            sent = time.monotonic()
            reader = ResponseReader(sock, budget)
            status, resp_headers, resp_body, truncated = read_response(reader, max_body)
            done = time.monotonic()
        finally:
            sock.close()
    except DeadlineExceeded:
        return _failure(RETRYABLE, "timeout", f"no response within {timeout_secs} s", timings())
    except WireError as exc:
        return _failure(RETRYABLE, "connection", str(exc), timings())
    except MalformedResponse as exc:
        return _failure(NON_RETRYABLE, "invalid_response", f"malformed response: {exc}", timings())

    kind, error_class = classify_status(status)
    error = None if kind == SUCCESS else _USERINFO.sub(r"\1", http_error_text(status, resp_body))
    retry_after = parse_retry_after(resp_headers.get("retry-after"), now()) if status in (429, 503) else None
    return CallResult(Outcome(kind, error_class, error, status), status, resp_headers, resp_body, truncated,
                      timings(), retry_after)
