"""Message acknowledgements in batches: one Redis call per batch instead of one per message.

dramatiq's Redis consumer acknowledges every message with its own call of the broker's ``dispatch.lua``
(``ack``: drop the id from this worker's ack set and the message from the queue's hash, and refresh the
worker's heartbeat). A Sluice message is a wake-up token: PostgreSQL decides what runs, and a message
delivered twice only claims nothing or another ready run. So the worker's consumer collects acks and sends
them together — when ``ACK_BATCH`` are pending, and always before the consumer goes back to Redis for more
messages or sleeps on an empty queue, and on close — in one script call that does exactly what that many
``ack`` calls do (the keys are the ones ``dispatch.lua`` documents).

An ack that never reaches Redis (the process dies first, or Redis fails) leaves its message in the worker's
ack set; dramatiq re-enqueues such messages once the worker's heartbeat is older than the broker's
``heartbeat_timeout`` — a redundant wake-up, as after any worker crash.
"""

from __future__ import annotations

from typing import Any

import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed

ACK_BATCH = 16

# KEYS: the worker's ack set for the queue, the queue's message hash, the heartbeats ZSET.
# ARGV: timestamp (ms), worker id, message ids... (dispatch.lua's ``ack``, once per id, one heartbeat)
ACK_MANY_SCRIPT = """
redis.call('zadd', KEYS[3], ARGV[1], ARGV[2])
for i = 3, #ARGV do
  if redis.call('srem', KEYS[1], ARGV[i]) > 0 then
    redis.call('hdel', KEYS[2], ARGV[i])
  end
end
return #ARGV - 2
"""


class BatchedAckConsumer(_RedisConsumer):  # type: ignore[misc]
    """dramatiq's Redis consumer with batched ``ack`` (everything else unchanged)."""

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        super().__init__(broker, queue_name, prefetch, timeout)
        self._pending: list[str] = []
        self._ack_many = broker.client.register_script(ACK_MANY_SCRIPT)
        namespace = broker.namespace
        self._keys = [f"{namespace}:__acks__.{broker.broker_id}.{queue_name}", f"{namespace}:{queue_name}.msgs",
                      f"{namespace}:__heartbeats__"]

    def ack(self, message: Any) -> None:
        self._pending.append(message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)
        if len(self._pending) >= ACK_BATCH:
            self.flush_acks()

    def flush_acks(self) -> None:
        if not self._pending:
            return
        ids, self._pending = self._pending, []
        try:
            self._ack_many(keys=self._keys, args=[current_millis(), self.broker.broker_id, *ids])
        except redis.ConnectionError as exc:
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


def use_batched_acks(broker: RedisBroker) -> None:
    """Make ``broker``'s consumers batch their acks (the worker's broker only; senders never consume)."""
    def consume(queue_name: str, prefetch: int = 1, timeout: int = 5000) -> BatchedAckConsumer:
        return BatchedAckConsumer(broker, queue_name, prefetch, timeout)

    broker.consume = consume  # type: ignore[method-assign]
