"""The Redis client of every process: one set of connection timeouts, so no call waits on a dead server.

Nothing Sluice sends blocks on the server (no BLPOP or WAIT; dramatiq's consumer polls), so a reply later
than ``SOCKET_TIMEOUT_SECS`` means the server or the network is gone: the call raises
``redis.exceptions.TimeoutError`` (a ``ConnectionError`` to callers: the API's 503, the worker's retry)
instead of holding a thread. Idle pooled connections are checked before reuse after
``HEALTH_CHECK_SECS``.
"""

from __future__ import annotations

import redis

CONNECT_TIMEOUT_SECS = 2.0
SOCKET_TIMEOUT_SECS = 5.0
HEALTH_CHECK_SECS = 30


def make_redis(url: str) -> redis.Redis:
    """A client for ``url`` (``REDIS_URL``) with Sluice's timeouts; options in the URL's query win."""
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECS, socket_timeout=SOCKET_TIMEOUT_SECS,
                                socket_keepalive=True, health_check_interval=HEALTH_CHECK_SECS)
