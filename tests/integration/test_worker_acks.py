"""Batched message acks (shared.messages.BatchedAckConsumer): dramatiq's acks, sent together, none lost."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import dramatiq
import pytest
import redis as redis_lib

from shared.messages import ACK_BATCH, SluiceBroker, enqueue_many, pending_messages

QUEUE = "test.acks"


def _broker(client: redis_lib.Redis) -> SluiceBroker:
    broker = SluiceBroker(client=client)
    broker.declare_queue(QUEUE)
    return broker


@pytest.fixture(name="fast_thread_switches")
def fast_thread_switches_fixture() -> Iterator[None]:
    """Switch threads every 10 µs, so that races between worker threads show within a short test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.00001)
    yield
    sys.setswitchinterval(before)


def _drain(broker: SluiceBroker, client: redis_lib.Redis, count: int, threads: int) -> list[str]:
    """Run ``count`` messages through a dramatiq worker on ``broker``; the values seen once it has acked them."""
    seen: list[str] = []
    done = threading.Event()

    def noop(value: str) -> None:
        seen.append(value)
        if len(seen) == count:
            done.set()

    dramatiq.actor(broker=broker, actor_name="noop", queue_name=QUEUE)(noop)
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=threads, worker_timeout=10)
    worker.start()
    try:
        enqueue_many(broker, QUEUE, "noop", [str(i) for i in range(count)])
        assert done.wait(60)
        deadline = time.monotonic() + 5
        while pending_messages(broker, QUEUE) and time.monotonic() < deadline:
            time.sleep(0.02)  # the last acks go out when the consumer next polls the empty queue
        assert pending_messages(broker, QUEUE) == 0, "acknowledged messages left in Redis"
    finally:
        worker.stop()
    return seen


def test_acks_are_sent_in_batches_and_on_close(redis_client: redis_lib.Redis) -> None:
    broker = _broker(redis_client)
    enqueue_many(broker, QUEUE, "noop", [str(i) for i in range(ACK_BATCH + 3)])
    acks_key = f"dramatiq:__acks__.{broker.broker_id}.{QUEUE}"
    consumer = broker.consume(QUEUE, prefetch=ACK_BATCH + 3, timeout=10)
    fetched = [next(consumer) for _ in range(ACK_BATCH + 3)]
    assert redis_client.scard(acks_key) == ACK_BATCH + 3
    for message in fetched[:ACK_BATCH - 1]:
        consumer.ack(message)
    assert pending_messages(broker, QUEUE) == ACK_BATCH + 3  # nothing sent yet
    assert consumer.outstanding_message_count == 4  # acked messages no longer count against prefetch
    consumer.ack(fetched[ACK_BATCH - 1])
    assert pending_messages(broker, QUEUE) == 3 and redis_client.scard(acks_key) == 3
    consumer.ack(fetched[ACK_BATCH])
    consumer.close()
    assert pending_messages(broker, QUEUE) == 2 and redis_client.scard(acks_key) == 2
    assert redis_client.zscore("dramatiq:__heartbeats__", broker.broker_id) is not None


def test_a_worker_with_batched_acks_acks_everything(redis_client: redis_lib.Redis) -> None:
    seen = _drain(_broker(redis_client), redis_client, 50, threads=4)
    assert sorted(seen, key=int) == [str(i) for i in range(50)]


def test_acks_from_many_worker_threads_at_once_are_all_sent(redis_client: redis_lib.Redis,
                                                            fast_thread_switches: None) -> None:
    # dramatiq acks from its worker threads while the consumer thread flushes before each fetch: an id
    # appended to a batch already being sent would stay unacknowledged while the worker lives.
    seen = _drain(_broker(redis_client), redis_client, 10_000, threads=16)
    assert len(seen) == 10_000
