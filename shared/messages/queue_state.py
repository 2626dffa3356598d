"""What the queues and the worker processes look like in Redis: for the sweeps, the metrics and the console.

Reads the key layout of dramatiq's Redis broker that ``shared.messages.layout`` documents (its contract
tests cover both).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dramatiq.brokers.redis import RedisBroker

from shared.messages.broker import HEARTBEAT_TIMEOUT_MS
from shared.messages.layout import DISPATCH_QUEUE, acks_key, heartbeats_key, messages_key, queue_key


def messages_waiting(broker: RedisBroker, queue_name: str, message_ids: Sequence[str]) -> set[str]:
    """Which of the keyed ``message_ids`` are still enqueued or in flight (not yet acknowledged): one round
    trip for the batch."""
    if not message_ids:
        return set()
    pipe = broker.client.pipeline(transaction=False)
    for message_id in message_ids:
        pipe.hexists(messages_key(broker, queue_name), message_id)
    return {message_id for message_id, present in zip(message_ids, pipe.execute(), strict=True) if present}


def pending_messages(broker: RedisBroker, queue_name: str = DISPATCH_QUEUE) -> int:
    """Messages enqueued and not yet acknowledged (ready plus in flight), for the sweeper and metrics."""
    return int(broker.client.hlen(messages_key(broker, queue_name)))


def ready_messages(broker: RedisBroker, queue_name: str = DISPATCH_QUEUE) -> int:
    """Messages waiting in the queue (not yet fetched by a worker)."""
    return int(broker.client.llen(queue_key(broker, queue_name)))


@dataclass(frozen=True)
class WorkerProcess:
    """A worker process as its broker's heartbeats show it: its broker id, its last heartbeat (unix ms) and
    the run messages it has fetched and not yet acknowledged."""

    broker_id: str
    last_heartbeat_ms: int
    in_flight: int


def live_workers(broker: RedisBroker, now_ms: int) -> list[WorkerProcess]:
    """The worker processes whose consumers heartbeated within ``HEARTBEAT_TIMEOUT_MS`` of ``now_ms``
    (senders never heartbeat: ``enqueue_many``), most recent first."""
    client = broker.client
    beats = client.zrevrangebyscore(heartbeats_key(broker), "+inf", now_ms - HEARTBEAT_TIMEOUT_MS, withscores=True)
    ids = [member.decode() if isinstance(member, bytes) else str(member) for member, _score in beats]
    pipe = client.pipeline(transaction=False)
    for broker_id in ids:
        pipe.scard(acks_key(broker, broker_id, DISPATCH_QUEUE))
    in_flight = pipe.execute() if ids else []
    # An idle worker stamps its heartbeat with the end of its wait (``SluiceBroker.fetch_in``): never later than now.
    return [WorkerProcess(broker_id, min(int(score), now_ms), int(count))
            for broker_id, (_member, score), count in zip(ids, beats, in_flight, strict=True)]
