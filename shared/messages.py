"""Queue and actor names, the broker, and enqueueing by actor name (the API and scheduler never import ``worker``).

A message carries only a run id (dramatiq's advice: send ids, not objects). PostgreSQL stays the source
of truth: a lost message is re-created by the sweeper (``scheduler.sweeps``) and a duplicate is harmless
because a worker starts an attempt only through a conditional ``queued → executing`` update.

This module is Sluice's one seam with dramatiq's Redis broker: everything that relies on more than
dramatiq's public API (the key layout of its ``dispatch.lua``, its Redis consumer class) is here, and
``tests/integration/test_library_contracts.py`` fails if an installed dramatiq changes any of it. The
dramatiq pin in ``pyproject.toml`` allows only the major those tests ran on. The layout, as ``dispatch.lua``
documents it: ``<ns>:<queue>`` a list of message ids, ``<ns>:<queue>.msgs`` a hash id → encoded message,
``<ns>:__acks__.<broker id>.<queue>`` the ids a consumer fetched and has not acknowledged,
``<ns>:__heartbeats__`` a sorted set of broker ids by last heartbeat (ms). ``shared.queue_state`` reads the
same layout for the sweeps, metrics and the console.

Wake-ups (ours, not dramatiq's): an idle consumer blocks in ``BLPOP`` on its queue's wake list
(``shared.redis_keys.queue_wake``) instead of polling. The enqueue script writes the messages and pushes the
wake tokens in one atomic step, so a token is never visible before its message; a consumer blocks only after
a fetch found the queue empty, so a message enqueued since then has left a token for it (or for another idle
consumer, which fetches it). Tokens are hints, never the truth: a consumer still looks at its queue every
``idle_poll_ms`` without one (messages put back by dramatiq's recovery of a dead worker carry no token).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import Middleware
from redis.exceptions import NoScriptError

from shared import redis_keys
from shared.config import Settings
from shared.due_announcer import DueAnnouncer
from shared.message_scripts import ACK_MANY_SCRIPT, ENQUEUE_SCRIPT
from shared.redis_client import make_redis

DISPATCH_ACTOR = "dispatch_run"
WEBHOOK_ACTOR = "deliver_webhook"
DISPATCH_QUEUE = "sluice.runs"
WEBHOOK_QUEUE = "sluice.webhooks"

# Consumers requeue a dead worker's unacknowledged messages once its broker heartbeat is this old (dramatiq's
# default: 60 s). Messages are interchangeable wake-up tokens, so an early requeue of a live but busy worker's
# messages only costs idle wake-ups, while a short timeout gets the prefetched messages of a SIGKILLed worker
# back into play quickly.
HEARTBEAT_TIMEOUT_MS = 15_000
ACK_BATCH = 16

# An idle consumer looks at its queue this often without a wake-up (each look is also its broker heartbeat,
# so it must stay well under HEARTBEAT_TIMEOUT_MS).
DEFAULT_IDLE_POLL_MS = 5_000
MAX_IDLE_POLL_MS = 10_000
# One enqueue wakes at most this many idle consumers, and a wake list never holds more tokens: enough for a
# large fleet to start on a burst together; tokens left over when nobody was idle cost each later idle
# consumer a wasted look, so their number is bounded.
WAKE_TOKENS_MAX = 256
WAKE_TTL_MS = 60_000  # a token nobody took within a minute is stale: idle consumers fetch before they block
STOP_TOKEN_TTL_MS = 10_000
# dramatiq puts a dead worker's unacknowledged messages back during "maintenance", run by a fetch at random
# (0.1 % of calls): with idle workers fetching every few seconds, hours apart. A Sluice broker also runs it
# on its first fetch after this long, so a SIGKILLed worker's messages return within this of its heartbeat
# timing out (two more commands per look when no worker is dead).
MAINTENANCE_INTERVAL_MS = 5_000
# While all its prefetched messages are taken, a consumer waits for this many to be acknowledged before it
# fetches again (fewer, larger fetches and ack batches under load).
REFILL_FRACTION = 4
FULL_WAIT_SECS = 1.0  # and looks whether its thread should stop at least this often
STOPPING_WAIT_SECS = 0.1


def queue_key(broker: RedisBroker, queue_name: str) -> str:
    return f"{broker.namespace}:{queue_name}"


def messages_key(broker: RedisBroker, queue_name: str) -> str:
    return f"{queue_key(broker, queue_name)}.msgs"


def acks_key(broker: RedisBroker, broker_id: str, queue_name: str) -> str:
    return f"{broker.namespace}:__acks__.{broker_id}.{queue_name}"


def heartbeats_key(broker: RedisBroker) -> str:
    return f"{broker.namespace}:__heartbeats__"


class UnsentAcks:
    """The acknowledged message ids of one queue not yet sent to Redis; thread-safe.

    dramatiq acks from its worker threads while its consumer thread flushes, hence the lock: an id appended to
    a batch already being sent would stay unacknowledged while the worker lives. The broker holds one per
    queue, not the consumer, because dramatiq replaces a consumer after a connection error: what one could
    not send, the next sends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []

    def add(self, message_id: str) -> int:
        """Add one id; the number now unsent."""
        with self._lock:
            self._ids.append(message_id)
            return len(self._ids)

    def take(self) -> list[str]:
        with self._lock:
            ids, self._ids = self._ids, []
        return ids

    def put_back(self, ids: list[str]) -> None:
        with self._lock:
            self._ids[:0] = ids


class BatchedAckConsumer(_RedisConsumer):  # type: ignore[misc]
    """dramatiq's Redis consumer, acknowledging in batches and blocking on a wake list when idle.

    Acks: a Sluice message is a wake-up token (PostgreSQL decides what runs; a message delivered twice claims
    nothing or another ready run), so acks can wait a little. They are sent together — when ``ACK_BATCH``
    are unsent, in the same round trip as the consumer's next fetch (or wait), at once while it is blocked,
    and on close — in one script call that does exactly what that many ``dispatch.lua`` ``ack`` calls do.
    Ids that fail to go out (Redis unreachable) are kept for the next flush. Only the ids unsent when the
    process dies stay in the ack set, which dramatiq requeues once this broker's heartbeat is
    ``heartbeat_timeout`` old: a redundant wake-up, as after any worker crash.

    Fetching (this replaces dramatiq's polling ``__next__``, which sleeps a growing back-off between looks
    at an empty queue): a fetch that finds the queue empty is followed by a ``BLPOP`` on the queue's wake
    list and the broker's stop list for up to ``idle_poll_ms``, with the next fetch pipelined behind it.
    While every prefetched message is taken, the consumer waits in memory until a quarter of them are
    acknowledged. Once the worker is shutting down it fetches nothing more (in-flight messages are
    still acknowledged) and checks in memory whether its thread should stop.
    """

    def __init__(self, broker: SluiceBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._unsent = broker.unsent_acks(queue_name)
        self._ack_many: Any = broker.client.register_script(ACK_MANY_SCRIPT)  # redis-py's Script
        self._keys = [acks_key(broker, broker.broker_id, queue_name), messages_key(broker, queue_name),
                      heartbeats_key(broker)]
        self._wait_keys = [broker.stop_key, redis_keys.queue_wake(broker.namespace, queue_name)]
        self._refill_at = prefetch - max(1, prefetch // REFILL_FRACTION)  # outstanding count that allows a fetch
        self._room = threading.Event()
        self._idle = False  # the last fetch found the queue empty: the next one waits for a wake-up first
        self._blocked = False  # in BLPOP: acks go out at once instead of waiting for the next fetch

    def ack(self, message: Any) -> None:
        self.queued_message_ids.discard(message.message_id)  # no longer counts against the prefetch
        if self._unsent.add(message.options["redis_message_id"]) >= ACK_BATCH or self._blocked:
            # Kept for the next flush if Redis is unreachable; the consumer thread's next fetch reports it.
            with contextlib.suppress(ConnectionClosed):
                self.flush_acks()
        self._freed()

    def nack(self, message: Any) -> None:
        try:
            super().nack(message)
        finally:
            self._freed()

    def _freed(self) -> None:
        if self.outstanding_message_count <= self._refill_at:
            self._room.set()

    def flush_acks(self) -> None:
        """Send every unsent ack; raises ``ConnectionClosed`` (the ids kept) if Redis is unreachable."""
        ids = self._unsent.take()
        if not ids:
            return
        try:
            self._ack_many(keys=self._keys, args=[current_millis(), self.broker.broker_id, *ids])
        except redis.ConnectionError as exc:
            self._unsent.put_back(ids)
            raise ConnectionClosed(exc) from None

    def requeue(self, messages: Iterable[Any]) -> None:
        """dramatiq's requeue (prefetched messages put back on shutdown), then their wake tokens."""
        message_ids = [message.options["redis_message_id"] for message in messages]
        super().requeue(messages)
        if message_ids:
            self.broker.wake(self.queue_name, len(message_ids))

    def __next__(self) -> Any:
        try:
            while True:
                while self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # an id whose message is gone (acked by a consumer it was requeued to)
                        continue
                    message = dramatiq.Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return MessageProxy(message)
                if self.broker.stopping.is_set():
                    self.flush_acks()
                    time.sleep(STOPPING_WAIT_SECS)  # until dramatiq stops this thread; no other Redis call
                    return None
                self._room.clear()
                if self.outstanding_message_count > self._refill_at:
                    self._room.wait(FULL_WAIT_SECS)  # the acks meanwhile go out with the next fetch
                    return None
                count = self.prefetch - self.outstanding_message_count
                self.message_cache = self._fetch(count, wait=self._idle)
                if not self.message_cache and not self._idle:  # found empty: look again once woken
                    self.message_cache = self._fetch(count, wait=True)
                self._idle = not self.message_cache
                if self._idle:
                    return None  # dramatiq's thread looks whether it should stop, then asks again
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _fetch(self, count: int, *, wait: bool) -> list[bytes | None]:
        """Up to ``count`` messages, in one round trip that also sends the unsent acks; with ``wait``, the
        fetch comes after a ``BLPOP`` on the wake and stop lists.

        Redis runs a connection's commands in order and holds the ones behind a blocked command, so the
        fetch runs the moment the wait ends (a token, the stop list, or ``idle_poll_ms`` without either):
        a woken consumer has its messages in one round trip, not two.
        """
        self._blocked = wait  # first: an ack from now on goes out at once rather than wait for this BLPOP
        ids = self._unsent.take()
        pipe = self.broker.client.pipeline(transaction=False)
        if ids:
            pipe.execute_command("EVALSHA", self._ack_many.sha, len(self._keys), *self._keys, current_millis(),
                                 self.broker.broker_id, *ids)
        if wait:
            pipe.blpop(self._wait_keys, timeout=self.broker.idle_poll_ms / 1000)
        self.broker.fetch_in(pipe, self.queue_name, count, waits=wait)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.TimeoutError:  # a client socket timeout shorter than the poll: as a poll without a token
            self._unsent.put_back(ids)  # sent or not: acking an id twice is harmless
            return []
        except redis.ConnectionError:
            self._unsent.put_back(ids)
            raise
        finally:
            self._blocked = False
        fetched = replies[-1]
        if ids and isinstance(replies[0], NoScriptError):  # Redis restarted empty: the script loads again
            self._unsent.put_back(ids)
            self.flush_acks()
        if isinstance(fetched, NoScriptError):
            fetched = self.broker.do_fetch(self.queue_name, count)
        for reply in (*replies[:-1], fetched):
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise reply
        return list(fetched)

    def close(self) -> None:
        try:
            self.flush_acks()
        finally:
            super().close()


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
    """

    def __init__(self, *, idle_poll_ms: int = DEFAULT_IDLE_POLL_MS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_middleware(_InterruptWaitsOnShutdown())
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
        _enqueue(self, queue_name, [], count)

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


def _message(queue_name: str, actor_name: str, arg: str, message_id: str | None = None) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=(arg,), kwargs={},
        options={"redis_message_id": message_id or str(uuid.uuid4())},
    )


def enqueue_many(broker: RedisBroker, queue_name: str, actor_name: str, ids: Iterable[str], *,
                 keyed: bool = False) -> int:
    """Enqueue one message per id in a single atomic Redis call; return the number enqueued.

    Writes exactly what dramatiq's ``dispatch.lua`` ``enqueue`` command writes — the encoded message in
    the ``<queue>.msgs`` hash under its ``redis_message_id`` and that id pushed on the ``<queue>`` list —
    plus the queue's wake tokens, in one script call (``ENQUEUE_SCRIPT``) instead of one per message (a
    bulk trigger enqueues 1,000 runs): no message is ever half-written, and no token is seen before its
    message. The script's other step, a heartbeat for the sender's broker id, only matters to consumers
    (it guards their un-acked messages), so a sender can skip it. Any dramatiq Redis broker can be
    passed; a stock one's workers read the messages and ignore the tokens.

    ``keyed``: each message's id is the id it carries, so ``messages_waiting`` can tell whether it is
    still in the queue (webhook deliveries).
    """
    messages = [_message(queue_name, actor_name, value, value if keyed else None) for value in ids]
    if not messages:
        return 0
    return _enqueue(broker, queue_name, [(m.options["redis_message_id"], m.encode()) for m in messages], len(messages))


def _enqueue(broker: RedisBroker, queue_name: str, messages: list[tuple[str, bytes]], tokens: int) -> int:
    """``ENQUEUE_SCRIPT``: ``(redis message id, encoded message)`` pairs and ``tokens`` wake tokens, atomically."""
    args: list[Any] = [tokens, WAKE_TOKENS_MAX, WAKE_TTL_MS]
    for message_id, data in messages:
        args += (message_id, data)
    keys = [queue_key(broker, queue_name), messages_key(broker, queue_name),
            redis_keys.queue_wake(broker.namespace, queue_name)]
    return int(broker.client.register_script(ENQUEUE_SCRIPT)(keys=keys, args=args))


def enqueue_runs(broker: RedisBroker, run_ids: Iterable[str]) -> int:
    return enqueue_many(broker, DISPATCH_QUEUE, DISPATCH_ACTOR, run_ids)


def enqueue_webhooks(broker: RedisBroker, delivery_ids: Iterable[str]) -> int:
    return enqueue_many(broker, WEBHOOK_QUEUE, WEBHOOK_ACTOR, delivery_ids, keyed=True)
