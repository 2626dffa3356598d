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
``<ns>:__heartbeats__`` a sorted set of broker ids by last heartbeat (ms).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed

from shared.config import Settings

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
ENQUEUE_CHUNK = 1000

# KEYS: the consumer's ack set for the queue, the queue's message hash, the heartbeats ZSET.
# ARGV: timestamp (ms), broker id, message ids... (dispatch.lua's ``ack``, once per id, one heartbeat)
ACK_MANY_SCRIPT = """
redis.call('zadd', KEYS[3], ARGV[1], ARGV[2])
for i = 3, #ARGV do
  if redis.call('srem', KEYS[1], ARGV[i]) > 0 then
    redis.call('hdel', KEYS[2], ARGV[i])
  end
end
return #ARGV - 2
"""


def _queue_key(broker: RedisBroker, queue_name: str) -> str:
    return f"{broker.namespace}:{queue_name}"


def _messages_key(broker: RedisBroker, queue_name: str) -> str:
    return f"{_queue_key(broker, queue_name)}.msgs"


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
    """dramatiq's Redis consumer, acknowledging in batches: one Redis call per batch instead of one per message.

    A Sluice message is a wake-up token (PostgreSQL decides what runs; a message delivered twice claims
    nothing or another ready run), so acks can wait a little. They are sent together — when ``ACK_BATCH``
    are unsent, before the consumer goes back to Redis for more messages or sleeps on an empty queue, and
    on close — in one script call that does exactly what that many ``dispatch.lua`` ``ack`` calls do. Ids
    that fail to go out (Redis unreachable) are kept for the next flush. Only the ids unsent when the process
    dies stay in the ack set, which dramatiq requeues once this broker's heartbeat is ``heartbeat_timeout``
    old: a redundant wake-up, as after any worker crash.
    """

    def __init__(self, broker: SluiceBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._unsent = broker.unsent_acks(queue_name)
        self._ack_many = broker.client.register_script(ACK_MANY_SCRIPT)
        self._keys = [f"{broker.namespace}:__acks__.{broker.broker_id}.{queue_name}",
                      _messages_key(broker, queue_name), f"{broker.namespace}:__heartbeats__"]

    def ack(self, message: Any) -> None:
        self.queued_message_ids.discard(message.message_id)  # no longer counts against the prefetch
        if self._unsent.add(message.options["redis_message_id"]) >= ACK_BATCH:
            # Kept for the next flush if Redis is unreachable; the consumer thread's next fetch reports it.
            with contextlib.suppress(ConnectionClosed):
                self.flush_acks()

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

    def __next__(self) -> Any:
        if not self.message_cache:  # about to fetch from Redis or to sleep on an empty queue
            self.flush_acks()
        return super().__next__()

    def close(self) -> None:
        try:
            self.flush_acks()
        finally:
            super().close()


class SluiceBroker(RedisBroker):
    """dramatiq's Redis broker with batched acks and no delay queues.

    Sluice never enqueues with a dramatiq delay (delays live in PostgreSQL; dramatiq's are capped at 7 days
    and lost with Redis), so a queue is declared without its ``<queue>.DQ`` companion and a worker starts
    no consumer polling it, which would only double the idle Redis traffic.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._unsent_acks: dict[str, UnsentAcks] = {}

    @property
    def consumer_class(self) -> type[BatchedAckConsumer]:
        return BatchedAckConsumer

    def unsent_acks(self, queue_name: str) -> UnsentAcks:
        return self._unsent_acks[queue_name]

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self._unsent_acks[queue_name] = UnsentAcks()
            self.emit_after("declare_queue", queue_name)


def make_broker(settings: Settings, client: Any = None) -> SluiceBroker:
    """The Redis broker of every process; ``client`` lets ``sluice dev`` and tests pass their own Redis client."""
    connection = {"client": client} if client is not None else {"url": settings.redis_url}
    broker = SluiceBroker(heartbeat_timeout=HEARTBEAT_TIMEOUT_MS, **connection)
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
    """Enqueue one message per id in a single Redis round trip; return the number enqueued.

    Writes exactly what dramatiq's ``dispatch.lua`` ``enqueue`` command writes — the encoded message in
    the ``<queue>.msgs`` hash under its ``redis_message_id`` and that id pushed on the ``<queue>`` list —
    but as one HSET and one RPUSH per 1,000 messages instead of one script call per message (a bulk
    trigger enqueues 1,000 runs). The script's other step, a heartbeat for the sender's broker id, only
    matters to consumers (it guards their un-acked messages), so a sender can skip it.

    ``keyed``: each message's id is the id it carries, so ``messages_waiting`` can tell whether it is
    still in the queue (webhook deliveries).
    """
    messages = [_message(queue_name, actor_name, value, value if keyed else None) for value in ids]
    if not messages:
        return 0
    pipe = broker.client.pipeline(transaction=False)
    for start in range(0, len(messages), ENQUEUE_CHUNK):
        chunk = messages[start:start + ENQUEUE_CHUNK]
        pipe.hset(_messages_key(broker, queue_name), mapping={m.options["redis_message_id"]: m.encode() for m in chunk})
        pipe.rpush(_queue_key(broker, queue_name), *[m.options["redis_message_id"] for m in chunk])
    pipe.execute()
    return len(messages)


def enqueue_runs(broker: RedisBroker, run_ids: Iterable[str]) -> int:
    return enqueue_many(broker, DISPATCH_QUEUE, DISPATCH_ACTOR, run_ids)


def enqueue_webhooks(broker: RedisBroker, delivery_ids: Iterable[str]) -> int:
    return enqueue_many(broker, WEBHOOK_QUEUE, WEBHOOK_ACTOR, delivery_ids, keyed=True)


def messages_waiting(broker: RedisBroker, queue_name: str, message_ids: Sequence[str]) -> set[str]:
    """Which of the keyed ``message_ids`` are still enqueued or in flight (not yet acknowledged): one round
    trip for the batch."""
    if not message_ids:
        return set()
    pipe = broker.client.pipeline(transaction=False)
    for message_id in message_ids:
        pipe.hexists(_messages_key(broker, queue_name), message_id)
    return {message_id for message_id, present in zip(message_ids, pipe.execute(), strict=True) if present}


def pending_messages(broker: RedisBroker, queue_name: str = DISPATCH_QUEUE) -> int:
    """Messages enqueued and not yet acknowledged (ready plus in flight), for the sweeper and metrics."""
    return int(broker.client.hlen(_messages_key(broker, queue_name)))


def ready_messages(broker: RedisBroker, queue_name: str = DISPATCH_QUEUE) -> int:
    """Messages waiting in the queue (not yet fetched by a worker)."""
    return int(broker.client.llen(_queue_key(broker, queue_name)))
