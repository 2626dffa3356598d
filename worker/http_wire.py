"""HTTP/1.1 on the wire for one endpoint call: connect to a checked IP, TLS, send, read one response.

Why not ``http.client``: its buffered socket file cannot be read again after a socket timeout, and we
need short timeouts (≤ 0.25 s) in a loop so one deadline covers every phase and a cancel is noticed
within about a second (§5.5, §5.17). A call never reuses a connection (``Connection: close``), so the
subset needed is small: a status line, headers, and a body framed by Content-Length, chunked encoding
or connection close. Every blocking step goes through ``Budget.slice()``.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import time
from collections.abc import Callable

POLL_SECS = 0.25  # longest single blocking wait: bounds how late a cancel or the deadline is noticed
MAX_HEADER_BYTES = 64 * 1024
RECV_BYTES = 64 * 1024
_CLOSED_EARLY = "connection closed before a full response"


class CallAborted(Exception):
    """``should_abort()`` turned true while the call was in progress (§5.17); the outcome is discarded."""


class DeadlineExceeded(Exception):
    """The attempt's deadline passed in some phase (DNS, connect, TLS, send, wait or read)."""


class WireError(Exception):
    """A ``connection``-class failure; ``str()`` is the reason after ``connection: ``."""


class MalformedResponse(Exception):
    """The peer answered something that is not HTTP/1.x (class ``invalid_response``)."""


class Budget:
    """The time left for one call, plus the abort check, polled at most every ``POLL_SECS``."""

    def __init__(self, deadline: float, should_abort: Callable[[], bool] | None) -> None:
        self.deadline = deadline
        self._should_abort = should_abort
        # Poll the abort hook on a timer, not per recv: it may hit Redis, and fast calls never need it.
        self._next_abort_check = time.monotonic() + POLL_SECS

    def slice(self) -> float:
        """Seconds the next blocking step may wait (≤ POLL_SECS); raises when time is up or aborted."""
        now = time.monotonic()
        if self._should_abort is not None and now >= self._next_abort_check:
            self._next_abort_check = now + POLL_SECS
            if self._should_abort():
                raise CallAborted()
        remaining = self.deadline - now
        if remaining <= 0:
            raise DeadlineExceeded()
        return remaining if remaining < POLL_SECS else POLL_SECS


_RESET = "connection reset"
_REASONS = {errno.ECONNREFUSED: "connection refused", errno.ECONNRESET: _RESET, errno.EPIPE: _RESET,
            errno.ECONNABORTED: _RESET, errno.ETIMEDOUT: "connect timed out",
            errno.ENETUNREACH: "no route to host", errno.EHOSTUNREACH: "no route to host"}


def _reason(err: int | None) -> str:
    """The text after ``connection: `` for an errno (OSError.errno may be None)."""
    return _REASONS.get(err or 0) or (f"socket error: {os.strerror(err).lower()}" if err else "socket error")


def _connect_one(ip: str, port: int, budget: Budget, share_deadline: float) -> socket.socket | int:
    """A connected blocking socket, or the errno that made this address fail."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Non-blocking connect + poll: a blocking connect that times out cannot be resumed, and an
        # unreachable address may otherwise hold the call for minutes.
        sock.setblocking(False)
        err = sock.connect_ex((ip, port))
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while True:
                wait = budget.slice()
                left = share_deadline - time.monotonic()
                if left <= 0:
                    err = errno.ETIMEDOUT  # this address used its share; try the next one
                    break
                if poller.poll(min(wait, left) * 1000):
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    break
        if err:
            sock.close()
            return int(err)
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    except BaseException:
        sock.close()
        raise


def open_socket(ips: list[str], port: int, budget: Budget) -> socket.socket:
    """TCP-connect to the first of ``ips`` that accepts, in order; never resolves anything.

    Each address gets an equal share of the time left, so one black-holed address cannot starve the
    others. Raises ``WireError`` (last address's reason) or ``DeadlineExceeded``.
    """
    last_err = errno.EHOSTUNREACH
    for index, ip in enumerate(ips):
        now = time.monotonic()
        share_deadline = now + (budget.deadline - now) / (len(ips) - index)
        result = _connect_one(ip, port, budget, share_deadline)
        if isinstance(result, socket.socket):
            return result
        last_err = result
    if time.monotonic() >= budget.deadline:
        raise DeadlineExceeded()
    raise WireError(_reason(last_err))


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS failure: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return "TLS failure: connection closed during handshake"
    detail = str(exc.reason or exc.strerror or type(exc).__name__)
    return "TLS failure: " + detail.replace("_", " ").lower()  # e.g. WRONG_VERSION_NUMBER


def start_tls(sock: socket.socket, server_hostname: str, context: ssl.SSLContext,
              budget: Budget) -> ssl.SSLSocket:
    """TLS over an already connected socket; SNI and the certificate check use ``server_hostname``."""
    tls = context.wrap_socket(sock, server_hostname=server_hostname, do_handshake_on_connect=False)
    try:
        while True:
            tls.settimeout(budget.slice())
            try:
                tls.do_handshake()  # after a timeout OpenSSL is mid-handshake and resumes here
                return tls
            except TimeoutError:
                continue
            except ssl.SSLError as exc:
                raise WireError(_tls_reason(exc)) from exc
            except OSError as exc:
                raise WireError(_reason(exc.errno)) from exc
    except BaseException:
        tls.close()
        raise


def send_all(sock: socket.socket, data: bytes, budget: Budget) -> None:
    """Send every byte of ``data`` within the budget (raises ``WireError``/``DeadlineExceeded``)."""
    view = memoryview(data)
    sent = 0
    while sent < len(view):
        sock.settimeout(budget.slice())
        try:
            sent += sock.send(view[sent:])  # a timed-out send sent nothing; retry the same bytes
        except TimeoutError:
            continue
        except OSError as exc:
            raise WireError(_reason(exc.errno)) from exc


class ResponseReader:
    """Buffered reads from one socket under a budget; records when the first response byte arrived."""

    def __init__(self, sock: socket.socket, budget: Budget) -> None:
        self._sock = sock
        self._budget = budget
        self._buf = bytearray()
        self.first_byte_at: float | None = None

    def _fill(self) -> bool:
        """Append what the peer sends next; False at end of stream."""
        while True:
            self._sock.settimeout(self._budget.slice())
            try:
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            except ssl.SSLError as exc:
                raise WireError(_tls_reason(exc)) from exc
            except OSError as exc:
                raise WireError(_reason(exc.errno)) from exc
            if not data:
                return False
            if self.first_byte_at is None:
                self.first_byte_at = time.monotonic()
            self._buf += data
            return True

    def read_until(self, marker: bytes, limit: int) -> bytes:
        """Bytes up to and including ``marker``; MalformedResponse past ``limit`` bytes."""
        while True:
            found = self._buf.find(marker)
            if found >= 0:
                end = found + len(marker)
                out = bytes(self._buf[:end])
                del self._buf[:end]
                return out
            if len(self._buf) > limit:
                raise MalformedResponse("response head too large")
            if not self._fill():
                raise WireError(_CLOSED_EARLY)

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes; the peer closing first is a connection failure."""
        while len(self._buf) < size:
            if not self._fill():
                raise WireError(_CLOSED_EARLY)
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def read_to_close(self, limit: int) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes until the peer closes; ``truncated`` as soon as more than that came."""
        while len(self._buf) <= limit:
            if not self._fill():
                break
        out = bytes(self._buf[:limit])
        truncated = len(self._buf) > limit
        del self._buf[:]
        return out, truncated


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status code and headers (names lowercased, repeats joined with ", ") from a response head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise MalformedResponse("malformed status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise MalformedResponse("malformed header line")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(parts[1]), headers


def _read_chunked(reader: ResponseReader, max_body: int) -> tuple[bytes, bool]:
    """Decode a chunked body, keeping at most ``max_body`` bytes; trailers are not read (we close)."""
    body = bytearray()
    while True:
        size_line = reader.read_until(b"\r\n", 4096)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise MalformedResponse("malformed chunk size") from None
        if size < 0:
            raise MalformedResponse("malformed chunk size")
        if size == 0:
            return bytes(body), False
        if len(body) + size > max_body:
            # Enough to know it is too long: take what fits and stop without waiting for the rest.
            body += reader.read_exact(max_body - len(body))
            return bytes(body), True
        body += reader.read_exact(size)
        reader.read_exact(2)  # the CRLF after the chunk data


def read_response(reader: ResponseReader, max_body: int) -> tuple[int, dict[str, str], bytes, bool]:
    """``(status, headers, body, truncated)`` of one response, framed per RFC 9112 §6.3.

    1xx, 204 and 304 carry no body (a 1xx is taken as final: Sluice never sends ``Expect`` and treats it
    as an invalid response). Raises ``WireError`` if the peer closes early, ``MalformedResponse``
    for non-HTTP data, ``DeadlineExceeded``/``CallAborted`` from the budget.
    """
    status, headers = _parse_head(reader.read_until(b"\r\n\r\n", MAX_HEADER_BYTES))
    if status < 200 or status in (204, 304):
        return status, headers, b"", False
    encoding = headers.get("transfer-encoding")
    if encoding is not None:
        if encoding.rsplit(",", 1)[-1].strip().lower() != "chunked":
            return status, headers, *reader.read_to_close(max_body)
        body, truncated = _read_chunked(reader, max_body)
        return status, headers, body, truncated
    length_text = headers.get("content-length")
    if length_text is None:
        return status, headers, *reader.read_to_close(max_body)
    values = {v.strip() for v in length_text.split(",")}  # identical repeats are allowed
    length_value = values.pop()
    if values or not length_value.isdigit():
        raise MalformedResponse("invalid Content-Length")
    length = int(length_value)
    if length > max_body:
        return status, headers, reader.read_exact(max_body), True
    return status, headers, reader.read_exact(length), False
