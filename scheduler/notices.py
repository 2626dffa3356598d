"""Due-time announcements, heard: the thread that lets the maintenance loop sleep until work is due.

API and worker processes announce the instant they gave the scheduler work (``shared.due_announcer``:
a delayed run's due time, a webhook retry) on a Redis pub/sub channel. This thread holds one
subscribed connection (no polling: Redis pushes each message) and hands each instant to ``on_due``. After a
lost connection it resubscribes and reports "now", because announcements made meanwhile were not heard and
the loop should look at PostgreSQL once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from shared import redis_keys

log = logging.getLogger("sluice.maintenance")

RECONNECT_SECS = 1.0
LISTEN_TIMEOUT_SECS = 1.0  # how often the thread checks whether to stop (a read timeout: no Redis call)


class DueListener:
    """Calls ``on_due(epoch seconds)`` for every announcement until ``stop`` is set."""

    def __init__(self, client: redis.Redis, on_due: Callable[[float], None]) -> None:
        self._client = client
        self._on_due = on_due
        self.subscribed = threading.Event()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="due-notices", daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        failing = False
        while not stop.is_set():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(redis_keys.scheduler_due_channel(redis_keys.redis_db(self._client)))
                if self.subscribed.is_set():
                    self._on_due(time.time())  # reconnected: what was announced meanwhile is unknown
                self.subscribed.set()
                failing = False
                while not stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_TIMEOUT_SECS)
                    if message is not None and message.get("type") == "message":
                        self._heard(message["data"])
            except (redis.RedisError, OSError) as exc:
                if not failing:  # once per outage
                    log.warning("due-time announcements unavailable; sweeping periodically meanwhile",
                                extra={"error": type(exc).__name__})
                failing = True
                stop.wait(RECONNECT_SECS)
            finally:
                pubsub.close()

    def _heard(self, data: bytes | str) -> None:
        try:
            at_ms = int(data)
        except (TypeError, ValueError):
            log.warning("ignoring a malformed due-time announcement")
            return
        self._on_due(at_ms / 1000)
