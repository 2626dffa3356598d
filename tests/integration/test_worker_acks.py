"""Batched message acks (worker.acks): the same Redis state as dramatiq's one-by-one acks, sent together."""

from __future__ import annotations

import threading
import time

import dramatiq
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from shared.messages import enqueue_many
from worker.acks import ACK_BATCH, BatchedAckConsumer, use_batched_acks

QUEUE = "test.acks"


def _broker(client: redis_lib.Redis) -> RedisBroker:
    broker = RedisBroker(client=client)
    broker.declare_queue(QUEUE)
    return broker


def test_acks_are_sent_in_batches_and_on_close(redis_client: redis_lib.Redis) -> None:
    broker = _broker(redis_client)
    enqueue_many(broker, QUEUE, "noop", [str(i) for i in range(ACK_BATCH + 3)])
    messages_key, acks_key = f"dramatiq:{QUEUE}.msgs", f"dramatiq:__acks__.{broker.broker_id}.{QUEUE}"
    consumer = BatchedAckConsumer(broker, QUEUE, prefetch=ACK_BATCH + 3, timeout=10)
    fetched = [next(consumer) for _ in range(ACK_BATCH + 3)]
    assert redis_client.scard(acks_key) == ACK_BATCH + 3
    for message in fetched[:ACK_BATCH - 1]:
        consumer.ack(message)
    assert redis_client.hlen(messages_key) == ACK_BATCH + 3  # nothing sent yet
    assert consumer.outstanding_message_count == 4  # acked messages no longer count against prefetch
    consumer.ack(fetched[ACK_BATCH - 1])
    assert redis_client.hlen(messages_key) == 3 and redis_client.scard(acks_key) == 3
    consumer.ack(fetched[ACK_BATCH])
    consumer.close()
    assert redis_client.hlen(messages_key) == 2 and redis_client.scard(acks_key) == 2
    assert redis_client.zscore("dramatiq:__heartbeats__", broker.broker_id) is not None


def test_a_worker_with_batched_acks_acks_everything(redis_client: redis_lib.Redis) -> None:
    broker = _broker(redis_client)
    use_batched_acks(broker)
    seen: list[str] = []
    done = threading.Event()

    def noop(value: str) -> None:
        seen.append(value)
        if len(seen) == 50:
            done.set()

    dramatiq.actor(broker=broker, actor_name="noop", queue_name=QUEUE)(noop)
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=4, worker_timeout=10)
    worker.start()
    try:
        enqueue_many(broker, QUEUE, "noop", [str(i) for i in range(50)])
        assert done.wait(10)
        deadline = time.monotonic() + 5
        while redis_client.hlen(f"dramatiq:{QUEUE}.msgs") and time.monotonic() < deadline:
            time.sleep(0.02)  # the last acks go out when the consumer next polls the empty queue
        assert redis_client.hlen(f"dramatiq:{QUEUE}.msgs") == 0
    finally:
        worker.stop()
    assert sorted(seen, key=int) == [str(i) for i in range(50)]
