"""The Redis client of every process: one set of connection timeouts, so no call waits on a dead server.

The only command that waits on the server is an idle worker's ``BLPOP`` on its wake list, whose client
reads for that long more (``blocking_secs``); any other reply later than ``SOCKET_TIMEOUT_SECS`` means the
server or the network is gone: the call raises ``redis.exceptions.ConnectionError`` (the API's 503, the
worker's retry) instead of holding a thread. Idle pooled connections are checked before reuse after
``HEALTH_CHECK_SECS``.

The read and write timeouts are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking socket), not
Python's socket timeout: Python implements its own with a ``poll`` before every send and every receive,
two extra system calls per command (a trigger makes one Redis call, a worker several per run). The
kernel's bound is the same without them. Only the connect keeps Python's timeout.
``tests/integration/test_library_contracts.py`` fails if an installed redis-py stops creating its sockets
through ``_connect`` or picks other connection classes.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import redis

CONNECT_TIMEOUT_SECS = 2.0
SOCKET_TIMEOUT_SECS = 5.0
HEALTH_CHECK_SECS = 30


class _KernelTimeouts:
    """A redis-py connection whose socket reads and writes time out after ``io_timeout_secs`` in the kernel."""

    def __init__(self, *args: Any, io_timeout_secs: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.io_timeout_secs = io_timeout_secs

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[misc]
        secs = self.io_timeout_secs
        timeval = struct.pack("ll", int(secs), int(secs % 1 * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        return sock


class TcpConnection(_KernelTimeouts, redis.Connection):
    pass


class TlsConnection(_KernelTimeouts, redis.SSLConnection):
    pass


class UnixConnection(_KernelTimeouts, redis.UnixDomainSocketConnection):
    pass


# redis-py's connection class for a URL's scheme → the same with the kernel's timeouts.
TIMED_CLASSES: dict[type[Any], type[Any]] = {
    redis.Connection: TcpConnection,
    redis.SSLConnection: TlsConnection,
    redis.UnixDomainSocketConnection: UnixConnection,
}


def connection_class(url: str) -> type[Any]:
    """The connection class for ``url``; a URL redis-py refuses raises its ``ValueError``."""
    return TIMED_CLASSES[redis.connection.parse_url(url).get("connection_class", redis.Connection)]


def make_redis(url: str, *, blocking_secs: float = 0.0) -> redis.Redis:
    """A client for ``url`` (``REDIS_URL``, already validated) with Sluice's timeouts; options in the URL's
    query win. ``blocking_secs``: the longest a command of this client waits on the server by design (a
    ``BLPOP``)."""
    pool = redis.ConnectionPool.from_url(url, connection_class=connection_class(url),
                                         io_timeout_secs=SOCKET_TIMEOUT_SECS + blocking_secs,
                                         socket_connect_timeout=CONNECT_TIMEOUT_SECS, socket_keepalive=True,
                                         health_check_interval=HEALTH_CHECK_SECS)
    # The client owns the pool: closing it closes the connections (the types-redis stubs predate from_pool).
    return redis.Redis.from_pool(pool)  # type: ignore[attr-defined,no-any-return]
