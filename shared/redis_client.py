"""The Redis client of every process: one set of connection timeouts, so no call waits on a dead server.

The only command that waits on the server is an idle worker's ``BLPOP`` on its wake list, whose client
reads for that long more (``blocking_secs``); any other reply later than ``SOCKET_TIMEOUT_SECS`` means the
server or the network is gone: the call raises
``redis.exceptions.TimeoutError`` (a ``ConnectionError`` to callers: the API's 503, the worker's retry)
instead of holding a thread. Idle pooled connections are checked before reuse after
``HEALTH_CHECK_SECS``.
"""

from __future__ import annotations

import redis

CONNECT_TIMEOUT_SECS = 2.0
SOCKET_TIMEOUT_SECS = 5.0
HEALTH_CHECK_SECS = 30


def make_redis(url: str, *, blocking_secs: float = 0.0) -> redis.Redis:
    """A client for ``url`` (``REDIS_URL``) with Sluice's timeouts; options in the URL's query win.
    ``blocking_secs``: the longest a command of this client waits on the server by design (a ``BLPOP``)."""
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECS,
                                socket_timeout=SOCKET_TIMEOUT_SECS + blocking_secs,
                                socket_keepalive=True, health_check_interval=HEALTH_CHECK_SECS)
