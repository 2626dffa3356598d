"""dramatiq's Redis consumer as Sluice runs it: batched acks, and a wait on a wake list when idle.

The wake-ups are ours, not dramatiq's: an idle consumer blocks in ``BLPOP`` on its queue's wake list
(``shared.redis_keys.queue_wake``) instead of polling. The enqueue script (``shared.messages.enqueue``)
writes the messages and pushes the wake tokens in one atomic step, so a token is never visible before its
message; a consumer blocks only after a fetch found the queue empty, so a message enqueued since then has
left a token for it (or for another idle consumer, which fetches it). Tokens are hints, never the truth: a
consumer still looks at its queue every ``idle_poll_ms`` without one (messages put back by dramatiq's
recovery of a dead worker carry no token).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

import dramatiq
import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from redis.exceptions import NoScriptError

from shared import redis_keys
from shared.messages.layout import acks_key, heartbeats_key, messages_key
from shared.messages.scripts import ACK_MANY_SCRIPT

ACK_BATCH = 16  # unsent acknowledgements that go out at once instead of with the next fetch
# While all its prefetched messages are taken, a consumer waits for this many to be acknowledged before it
# fetches again (fewer, larger fetches and ack batches under load).
REFILL_FRACTION = 4
FULL_WAIT_SECS = 1.0  # and looks whether its thread should stop at least this often
STOPPING_WAIT_SECS = 0.1


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


class ConsumingBroker(Protocol):
    """What a consumer uses of its broker: ``shared.messages.broker.SluiceBroker``, which names this
    module's consumer as its ``consumer_class``."""

    client: Any
    namespace: str
    broker_id: str
    stop_key: str
    stopping: threading.Event
    idle_poll_ms: int

    def unsent_acks(self, queue_name: str) -> UnsentAcks: ...
    def fetch_in(self, pipe: Any, queue_name: str, count: int, *, waits: bool) -> None: ...
    def do_fetch(self, queue_name: str, prefetch: int) -> Any: ...
    def wake(self, queue_name: str, count: int) -> None: ...


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

    def __init__(self, broker: ConsumingBroker, queue_name: str, prefetch: int, timeout: int) -> None:
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
