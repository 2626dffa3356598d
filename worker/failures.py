"""What a call that got no usable response failed with (CONTRACT §5.3): its class and the text after it.

``requests`` and urllib3 wrap the error that ended a call in one or two layers of their own; ``describe``
looks through them for the cause and words it the way every Sluice error reads: ``connection: connection
refused``, ``connection: TLS failure: certificate verify failed: ...``, ``invalid_response: malformed
response: malformed status line``. An error it cannot place is not the endpoint's doing and is re-raised
by the caller (recorded as ``internal``).
"""

from __future__ import annotations

import errno
import http.client
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from requests import RequestException
from urllib3.exceptions import ConnectTimeoutError, InvalidHeader, NewConnectionError, ProxyError, ReadTimeoutError

from shared.runs.retries import NON_RETRYABLE, RETRYABLE

CLOSED_EARLY = "connection closed before a full response"
_RESET = "connection reset"
_REASONS = {errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: _RESET, errno.EPIPE: _RESET,
            errno.ECONNABORTED: _RESET, errno.ETIMEDOUT: "connect timed out",
            errno.ENETUNREACH: "no route to host", errno.EHOSTUNREACH: "no route to host"}


@dataclass(frozen=True)
class Failure:
    """``kind`` (retryable or not), ``error_class`` and ``reason``; ``reason`` is None for a timeout (the
    caller words it with the attempt's timeout)."""

    kind: str
    error_class: str
    reason: str | None


TIMED_OUT = Failure(RETRYABLE, "timeout", None)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (``args``, ``reason``, ``__cause__``, ``__context__``), outermost first."""
    queue, seen = [exc], set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        queue.extend(item for item in inner if isinstance(item, BaseException))


def _errno_reason(err: int | None) -> str:
    """The text after ``connection: `` for an errno (OSError.errno may be None)."""
    return _REASONS.get(err or 0) or (f"socket error: {os.strerror(err).lower()}" if err else "socket error")


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS failure: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return "TLS failure: connection closed during handshake"
    detail = str(exc.reason or exc.strerror or type(exc).__name__)
    return "TLS failure: " + detail.replace("_", " ").lower()  # e.g. WRONG_VERSION_NUMBER


def _malformed(exc: http.client.HTTPException | InvalidHeader) -> str:
    if isinstance(exc, http.client.LineTooLong):
        return "response head too large"
    if isinstance(exc, http.client.BadStatusLine):
        return "malformed status line"
    if isinstance(exc, http.client.UnknownProtocol):
        return f"unsupported protocol {exc.args[0]}"
    return str(exc).lower() or "malformed head"  # e.g. "got more than 100 headers", conflicting Content-Length


def _connection_reason(causes: list[BaseException]) -> str | None:
    """The reason of a connection-class failure found among ``causes``, else None."""
    for cause in causes:
        if isinstance(cause, ssl.SSLError):
            return _tls_reason(cause)
    for cause in causes:
        if isinstance(cause, http.client.RemoteDisconnected | http.client.IncompleteRead):
            return CLOSED_EARLY
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno is not None:
            return _errno_reason(cause.errno)
    for cause in causes:
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            return _RESET
    for cause in reversed(causes):  # innermost first: the wrappers' own texts repeat their causes
        if (isinstance(cause, OSError) and not isinstance(cause, TimeoutError | RequestException)
                and str(cause)):
            return str(cause).lower()  # e.g. a proxy's "tunnel connection failed: 403 forbidden"
    return None


def describe(exc: BaseException) -> Failure | None:
    """The failure ``exc`` (raised by a send or a body read) stands for; None if it is not a network failure."""
    causes = list(_causes(exc))
    if any(isinstance(c, ProxyError) for c in causes):
        inner = [c for c in causes if not isinstance(c, ProxyError)]
        if any(isinstance(c, ReadTimeoutError | TimeoutError) for c in inner):
            return TIMED_OUT
        return Failure(RETRYABLE, "connection", f"proxy failure: {_connection_reason(inner) or 'unreachable'}")
    if any(isinstance(c, ConnectTimeoutError) and not isinstance(c, NewConnectionError) for c in causes):
        return Failure(RETRYABLE, "connection", "connect timed out")  # the system gave up before the deadline
    if any(isinstance(c, ReadTimeoutError | TimeoutError) for c in causes):
        return TIMED_OUT
    for cause in causes:
        if (isinstance(cause, http.client.HTTPException | InvalidHeader)
                and not isinstance(cause, http.client.RemoteDisconnected | http.client.IncompleteRead)):
            return Failure(NON_RETRYABLE, "invalid_response", f"malformed response: {_malformed(cause)}")
    reason = _connection_reason(causes)
    return None if reason is None else Failure(RETRYABLE, "connection", reason)
