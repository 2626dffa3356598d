"""Lua scripts sent on one Redis connection per thread, for the worker's per-attempt calls.

redis-py's ``Script.__call__`` goes through the client's per-command machinery on every call: pool checkout
and check-in, retry wrapper, health check, response callbacks. On the worker's hot path (the limit script
before every start of a limited job, the release at its end, the lease of an unlimited one) that cost
several times the round trip itself (measured: ~150 µs of CPU per acquire against ~65 µs for the same
work sent directly). ``ThreadScripts`` keeps one connection of the client's own pool settings per thread
and sends ``EVALSHA`` (``EVAL`` once after a ``NOSCRIPT``: first use on a server, or after a Redis restart)
straight on it.

An error closes that connection (the next call reconnects) and is raised as ``redis.exceptions.RedisError``
or ``OSError``, like any Redis call; nothing is retried, as with the client (a script may have run).

This module is Sluice's one use of redis-py below its client API: it builds connections from the client's
pool settings (``connection_class``, ``connection_kwargs``) and drives them with ``send_command`` and
``read_response``. ``tests/integration/test_library_contracts.py`` fails if an installed redis-py changes
any of that; the redis pin in ``pyproject.toml`` allows only the major those tests ran on.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import redis


class LuaScript:
    """A script's text and SHA1, computed once."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


class ThreadScripts:
    """Runs ``LuaScript``s on a per-thread connection to the client's server; thread-safe."""

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._connection_class: Any = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self._local = threading.local()

    def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """The script's reply, parsed (integers, bytes, lists)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connection_class(**self._connection_kwargs)
        try:
            try:
                return self._call(connection, "EVALSHA", script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                return self._call(connection, "EVAL", script.text, len(keys), *keys, *args)
        except BaseException:
            self._local.connection = None
            connection.disconnect()
            raise

    @staticmethod
    def _call(connection: Any, *args: Any) -> Any:
        connection.send_command(*args, check_health=False)
        return connection.read_response()  # raises error replies (NOSCRIPT as NoScriptError)
