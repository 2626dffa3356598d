"""Batched message acks (shared.messages.consumer.BatchedAckConsumer): dramatiq's acks, sent together, none lost."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.errors import ConnectionClosed
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.messages.broker import SluiceBroker
from shared.messages.consumer import ACK_BATCH
from shared.messages.enqueue import enqueue_many
from shared.messages.queue_state import pending_messages
from tests.conftest import REDIS_DB, redis_url

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


class RedisLink:
    """A TCP relay to the test Redis that can be cut (open connections closed, new ones hung up at once)."""

    def __init__(self) -> None:
        target = urlsplit(redis_url())
        self._target = (target.hostname or "127.0.0.1", target.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                if self.cut_off:
                    client.close()
                    continue
                upstream = socket.create_connection(self._target)
                self._open += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off = True
        for end in self._open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        self._open = []

    def close(self) -> None:
        self.cut()
        self._listener.close()


@pytest.fixture(name="redis_link")
def redis_link_fixture(redis_client: redis_lib.Redis) -> Iterator[RedisLink]:
    link = RedisLink()
    yield link
    link.close()


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


def test_acks_redis_could_not_take_are_sent_later_by_the_next_consumer(redis_client: redis_lib.Redis,
                                                                     redis_link: RedisLink) -> None:
    # No retries in the client, so that an unreachable Redis fails the call at once.
    broker = _broker(redis_lib.Redis("127.0.0.1", redis_link.port, db=REDIS_DB, retry=Retry(NoBackoff(), 0)))
    enqueue_many(broker, QUEUE, "noop", [str(i) for i in range(ACK_BATCH + 1)])
    consumer = broker.consume(QUEUE, prefetch=ACK_BATCH + 1, timeout=10)
    fetched = [next(consumer) for _ in range(ACK_BATCH + 1)]
    redis_link.cut()
    for message in fetched[:ACK_BATCH]:
        consumer.ack(message)  # the last one's flush fails quietly: a worker thread's ack is not the place
    with pytest.raises(ConnectionClosed):
        consumer.close()  # dramatiq then replaces the consumer (once Redis answers again)
    direct = _broker(redis_client)
    assert pending_messages(direct, QUEUE) == ACK_BATCH + 1
    redis_link.cut_off = False
    replacement = broker.consume(QUEUE, prefetch=ACK_BATCH + 1, timeout=10)
    replacement.close()
    assert pending_messages(direct, QUEUE) == 1  # only the message never acknowledged
