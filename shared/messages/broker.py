"""The broker of every process: dramatiq's Redis broker with batched acks, blocking idle consumers and no
delay queues.

This package is Sluice's one seam with dramatiq's Redis broker: everything that relies on more than
dramatiq's public API (the key layout of its ``dispatch.lua``, ``shared.messages.layout``; its Redis
consumer class, ``shared.messages.consumer``; the Lua that writes its format, ``shared.messages.scripts``)
is in it, and ``tests/integration/test_library_contracts.py`` fails if an installed dramatiq changes any of
it. The dramatiq pin in ``pyproject.toml`` allows only the major those tests ran on.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from dramatiq.middleware import Middleware

from shared import redis_keys
from shared.config import Settings
from shared.due_announcer import DueAnnouncer
from shared.messages.consumer import BatchedAckConsumer, UnsentAcks
from shared.messages.enqueue import enqueue_messages
from shared.messages.layout import DISPATCH_QUEUE, WEBHOOK_QUEUE
from shared.redis_client import make_redis

# Consumers requeue a dead worker's unacknowledged messages once its broker heartbeat is this old (dramatiq's
# default: 60 s). Messages are interchangeable wake-up tokens, so an early requeue of a live but busy worker's
# messages only costs idle wake-ups, while a short timeout gets the prefetched messages of a SIGKILLed worker
# back into play quickly.
HEARTBEAT_TIMEOUT_MS = 15_000
# An idle consumer looks at its queue this often without a wake-up (each look is also its broker heartbeat,
# so it must stay well under HEARTBEAT_TIMEOUT_MS).
DEFAULT_IDLE_POLL_MS = 5_000
MAX_IDLE_POLL_MS = 10_000
STOP_TOKEN_TTL_MS = 10_000
# dramatiq puts a dead worker's unacknowledged messages back during "maintenance", run by a fetch at random
# (0.1 % of calls): with idle workers fetching every few seconds, hours apart. A Sluice broker also runs it
# on its first fetch after this long, so a SIGKILLed worker's messages return within this of its heartbeat
# timing out (two more commands per look when no worker is dead).
MAINTENANCE_INTERVAL_MS = 5_000


class _InterruptWaitsOnShutdown(Middleware):  # type: ignore[misc]
    def before_worker_shutdown(self, broker: dramatiq.Broker, _worker: Any) -> None:
        if isinstance(broker, SluiceBroker):
            broker.interrupt_waits()


class SluiceBroker(RedisBroker):
    """dramatiq's Redis broker with batched acks, blocking idle consumers and no delay queues.

    Sluice never enqueues with a dramatiq delay (delays live in PostgreSQL; dramatiq's are capped at 7 days
    and lost with Redis), so a queue is declared without its ``<queue>.DQ`` companion and a worker starts
    no consumer polling it. ``idle_poll_ms`` bounds how long an idle consumer waits for a wake-up before it
    looks at its queue anyway. When a worker starts shutting down, ``interrupt_waits`` ends its consumers'
    ``BLPOP`` through the broker's own stop list (``shared.redis_keys.consumer_stop``).

    That is its only middleware: none of dramatiq's defaults has work to do here, and each would run on
    every message. Retries live in PostgreSQL (a failed attempt is not an exception), an attempt's deadline
    is its own (``TimeLimit`` would cut a long call short), an old message is still a valid wake-up
    (``AgeLimit``), and no actor uses callbacks, pipelines or shutdown notifications.
    """

    def __init__(self, *, idle_poll_ms: int = DEFAULT_IDLE_POLL_MS, **kwargs: Any) -> None:
        super().__init__(middleware=[_InterruptWaitsOnShutdown()], **kwargs)
        self.idle_poll_ms = idle_poll_ms
        self.stopping = threading.Event()
        self.stop_key = redis_keys.consumer_stop(self.namespace, self.broker_id)
        self._unsent_acks: dict[str, UnsentAcks] = {}
        self.due_announcer = DueAnnouncer(self.client)  # one per process, like the broker
        self._next_maintenance_ms = 0
        self._maintenance_lock = threading.Lock()

    @property
    def consumer_class(self) -> type[BatchedAckConsumer]:
        return BatchedAckConsumer

    def _should_do_maintenance(self, command: str) -> int:
        """dramatiq's random choice, or a fetch once ``MAINTENANCE_INTERVAL_MS`` has passed since the last."""
        if command == "fetch":
            with self._maintenance_lock:
                now = current_millis()
                if now >= self._next_maintenance_ms:
                    self._next_maintenance_ms = now + MAINTENANCE_INTERVAL_MS
                    return 1
        return int(super()._should_do_maintenance(command))

    def fetch_in(self, pipe: Any, queue_name: str, count: int, *, waits: bool) -> None:
        """Add to ``pipe`` the call ``do_fetch(queue_name, count)`` makes (``dispatch.lua``'s ``fetch``);
        ``waits``: behind a ``BLPOP`` that holds it for up to ``idle_poll_ms``.

        Behind a wait, its heartbeat is stamped with the latest time it can run. Stamped when sent, it
        could be ``idle_poll_ms`` old on arrival, and twice that before the next one: past the heartbeat
        timeout, so other workers would take this one for dead.
        """
        stamp = current_millis() + (self.idle_poll_ms if waits else 0)
        args = ["fetch", stamp, queue_name, self.broker_id, self.heartbeat_timeout, self.dead_message_ttl,
                self._should_do_maintenance("fetch"), self._max_unpack_size(), count]
        dispatch: Any = self.scripts["dispatch"]  # redis-py's Script, registered by dramatiq
        pipe.execute_command("EVALSHA", dispatch.sha, 1, self.namespace, *args)

    def unsent_acks(self, queue_name: str) -> UnsentAcks:
        return self._unsent_acks[queue_name]

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self._unsent_acks[queue_name] = UnsentAcks()
            self.emit_after("declare_queue", queue_name)

    def wake(self, queue_name: str, count: int) -> None:
        """Push ``count`` wake tokens (capped) for messages already in ``queue_name``."""
        enqueue_messages(self, queue_name, [], count)

    def interrupt_waits(self) -> None:
        """Stop fetching: consumers blocked in ``BLPOP`` return at once and block no more."""
        self.stopping.set()
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self.stop_key, *["1"] * max(1, len(self.queues)))
        pipe.pexpire(self.stop_key, STOP_TOKEN_TTL_MS)
        with contextlib.suppress(redis.RedisError):
            pipe.execute()


def make_broker(settings: Settings, client: Any = None, *, idle_poll_ms: int = DEFAULT_IDLE_POLL_MS) -> SluiceBroker:
    """The Redis broker of every process; ``client`` lets ``sluice dev`` and tests pass their own Redis client."""
    # A consumer blocks in BLPOP for up to idle_poll_ms: the client's read timeout must outlast that wait.
    if client is None:
        client = make_redis(settings.redis_url, blocking_secs=idle_poll_ms / 1000)
    broker = SluiceBroker(heartbeat_timeout=HEARTBEAT_TIMEOUT_MS, idle_poll_ms=idle_poll_ms, client=client)
    broker.declare_queue(DISPATCH_QUEUE)
    broker.declare_queue(WEBHOOK_QUEUE)
    return broker
