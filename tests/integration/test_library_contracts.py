"""Contracts with dramatiq, redis-py and jsonschema: each test fails if an installed version changes an internal
Sluice uses.

Sluice relies on dramatiq's Redis key layout and consumer class (``shared.messages``) and on redis-py's
connection interface (``shared.limits.thread_scripts``, ``shared.redis_client``). The version pins in
``pyproject.toml`` allow only the majors these tests ran on; run them before widening a pin.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from typing import Any

import dramatiq
import pytest
import redis as redis_lib
from dramatiq.brokers.redis import RedisBroker

from shared import redis_client, redis_keys
from shared.limits.thread_scripts import LuaScript, ThreadScripts
from shared.messages.broker import SluiceBroker
from shared.messages.consumer import BatchedAckConsumer
from shared.messages.enqueue import WAKE_TOKENS_MAX, enqueue_many
from shared.messages.queue_state import pending_messages, ready_messages
from shared.redis_client import connection_class, make_redis
from tests.conftest import redis_url

QUEUE = "test.contract"
MAINTENANCE_ALWAYS = 1_000_000  # dramatiq's maintenance_chance scale: every dispatch call does maintenance


def _declared(broker: RedisBroker) -> RedisBroker:
    broker.declare_queue(QUEUE)
    return broker


def _wait_until(condition: Any, secs: float = 10.0) -> bool:
    deadline = time.monotonic() + secs
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- dramatiq ----------------------------------------------------------------------------------------------

def test_enqueue_many_writes_messages_a_stock_dramatiq_worker_runs_and_acks(redis_client: redis_lib.Redis) -> None:
    broker = _declared(RedisBroker(client=redis_client))
    seen: list[str] = []
    dramatiq.actor(broker=broker, actor_name="collect", queue_name=QUEUE)(seen.append)
    assert enqueue_many(broker, QUEUE, "collect", [str(i) for i in range(20)]) == 20
    assert (ready_messages(broker, QUEUE), pending_messages(broker, QUEUE)) == (20, 20)
    worker = dramatiq.Worker(broker, queues={QUEUE}, worker_threads=2, worker_timeout=10)
    worker.start()
    try:
        assert _wait_until(lambda: len(seen) == 20 and pending_messages(broker, QUEUE) == 0)
    finally:
        worker.stop()
    assert sorted(seen, key=int) == [str(i) for i in range(20)]
    assert ready_messages(broker, QUEUE) == 0


def _state(client: redis_lib.Redis, broker: RedisBroker, arg_of: dict[bytes, str]) -> dict[str, Any]:
    """Every key of ``broker``'s namespace, with names and message ids replaced by stable ones."""
    def name(key: bytes) -> str:
        return key.decode().replace(broker.namespace, "NS").replace(broker.broker_id, "BROKER")

    state: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{broker.namespace}:*"):
        kind = client.type(key).decode()
        if kind == "list":
            state[name(key)] = [arg_of[i] for i in client.lrange(key, 0, -1)]
        elif kind == "hash":
            state[name(key)] = sorted(arg_of[i] for i in client.hkeys(key))
        elif kind == "set":
            state[name(key)] = sorted(arg_of[i] for i in client.smembers(key))
        else:  # the heartbeats: members only (scores are clock readings)
            state[name(key)] = sorted(m.decode().replace(broker.broker_id, "BROKER")
                                      for m in client.zrange(key, 0, -1))
    return state


def test_batched_acks_leave_the_state_stock_acks_leave(redis_client: redis_lib.Redis) -> None:
    states = []
    for broker in (RedisBroker(client=redis_client, namespace="stock"),
                   SluiceBroker(client=redis_client, namespace="batched")):
        _declared(broker)
        enqueue_many(broker, QUEUE, "noop", [str(i) for i in range(8)])
        consumer = broker.consume(QUEUE, prefetch=6, timeout=10)
        fetched = [next(consumer) for _ in range(6)]
        for message in fetched[:4]:
            consumer.ack(message)
        consumer.close()
        arg_of = {m.options["redis_message_id"].encode(): m.args[0] for m in fetched}
        arg_of.update({i: dramatiq.Message.decode(data).args[0]
                       for i, data in redis_client.hgetall(f"{broker.namespace}:{QUEUE}.msgs").items()})
        states.append(_state(redis_client, broker, arg_of))
    stock, batched = states
    assert batched == stock
    assert stock["NS:test.contract"] == ["6", "7"] and stock["NS:__acks__.BROKER.test.contract"] == ["4", "5"]


def test_a_dramatiq_worker_consumes_through_consumer_class_and_no_delay_queue(redis_client: redis_lib.Redis) -> None:
    broker = _declared(SluiceBroker(client=redis_client))
    assert broker.get_declared_queues() == {QUEUE} and broker.get_declared_delay_queues() == set()
    dramatiq.actor(broker=broker, actor_name="noop", queue_name=QUEUE)(lambda _value: None)
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=10)
    worker.start()
    try:
        assert _wait_until(lambda: all(t.consumer is not None for t in worker.consumers.values()))
        assert {name: type(t.consumer) for name, t in worker.consumers.items()} == {QUEUE: BatchedAckConsumer}
    finally:
        worker.stop()


def test_a_dead_workers_unacked_messages_are_requeued_with_batched_acks(redis_client: redis_lib.Redis) -> None:
    dead = _declared(SluiceBroker(client=redis_client))
    enqueue_many(dead, QUEUE, "noop", [str(i) for i in range(5)])
    consumer = dead.consume(QUEUE, prefetch=5, timeout=10)
    fetched = [next(consumer) for _ in range(5)]
    for message in fetched[:2]:
        consumer.ack(message)
    consumer.flush_acks()  # its last heartbeat; then the process "dies" with three messages unacknowledged
    assert (pending_messages(dead, QUEUE), ready_messages(dead, QUEUE)) == (3, 0)

    time.sleep(0.2)
    alive = _declared(SluiceBroker(client=redis_client, heartbeat_timeout=100, maintenance_chance=MAINTENANCE_ALWAYS))
    survivor = alive.consume(QUEUE, prefetch=5, timeout=10)
    requeued = [next(survivor) for _ in range(3)]
    assert sorted(m.args[0] for m in requeued) == ["2", "3", "4"]
    assert redis_client.zscore("dramatiq:__heartbeats__", dead.broker_id) is None


class Pulling:
    """``next(consumer)`` in a thread until it yields a message (``None`` = a wait or a wake-up ended)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.message: Any = None
        self.nones = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._pull, daemon=True)
        self.thread.start()

    def _pull(self) -> None:
        while not self.done.is_set():
            message = next(self.consumer)
            if message is not None:
                self.message = message
                self.done.set()
                return
            self.nones += 1

    def stop(self) -> None:
        """End the pulling thread before the test's Redis client closes (a thread left in ``BLPOP`` would
        meet the closed connection in a later test)."""
        self.done.set()
        self.consumer.broker.interrupt_waits()
        self.thread.join(5)
        assert not self.thread.is_alive()


def _wake_key(broker: RedisBroker) -> str:
    return redis_keys.queue_wake(broker.namespace, QUEUE)


def test_an_idle_consumer_blocks_until_an_enqueue_wakes_it(redis_client: redis_lib.Redis) -> None:
    broker = _declared(SluiceBroker(client=redis_client, idle_poll_ms=10_000))
    pulling = Pulling(broker.consume(QUEUE, prefetch=2, timeout=10))
    time.sleep(0.5)
    assert (pulling.done.is_set(), pulling.nones) == (False, 0)  # one fetch, then blocked: no polling
    started = time.monotonic()
    enqueue_many(broker, QUEUE, "noop", ["x"])
    assert pulling.done.wait(2)
    assert time.monotonic() - started < 0.5  # woken, not found by a poll 10 s later
    assert pulling.message.args == ("x",)
    assert redis_client.llen(_wake_key(broker)) == 0  # the token was taken


def test_a_message_enqueued_without_a_wake_token_is_found_at_the_next_idle_poll(
        redis_client: redis_lib.Redis) -> None:
    broker = _declared(SluiceBroker(client=redis_client, idle_poll_ms=300))
    pulling = Pulling(broker.consume(QUEUE, prefetch=2, timeout=10))
    time.sleep(0.1)
    stock = _declared(RedisBroker(client=redis_client))  # dispatch.lua's enqueue: no token (an older sender)
    stock.enqueue(dramatiq.Message(queue_name=QUEUE, actor_name="noop", args=("y",), kwargs={}, options={}))
    assert pulling.done.wait(3)
    assert pulling.message.args == ("y",) and redis_client.llen(_wake_key(broker)) == 0


def test_a_consumer_carries_on_when_redis_forgets_its_scripts(redis_client: redis_lib.Redis) -> None:
    """After a Redis restart (or ``SCRIPT FLUSH``) the acks and the fetch sent in one pipeline meet NOSCRIPT:
    both are sent again through the scripts' own loading path."""
    broker = _declared(SluiceBroker(client=redis_client))
    enqueue_many(broker, QUEUE, "noop", ["a", "b", "c"])
    consumer = broker.consume(QUEUE, prefetch=1, timeout=10)
    first = next(consumer)
    consumer.ack(first)  # unsent: it goes with the next fetch
    redis_client.script_flush()
    assert next(consumer).args == ("b",)
    assert pending_messages(broker, QUEUE) == 2 and ready_messages(broker, QUEUE) == 1  # "a" acknowledged


def test_an_idle_consumers_heartbeat_stays_fresh_while_it_waits(redis_client: redis_lib.Redis) -> None:
    """The fetch pipelined behind a wait lands up to ``idle_poll_ms`` after it was sent: its heartbeat must
    not be that old on arrival, or a worker that holds a message and waits for more looks dead."""
    idle = _declared(SluiceBroker(client=redis_client, idle_poll_ms=2_000))
    enqueue_many(idle, QUEUE, "noop", ["held"])
    consumer = idle.consume(QUEUE, prefetch=2, timeout=10)
    assert next(consumer).args == ("held",)  # in hand, never acknowledged: the worker is still calling
    pulling = Pulling(consumer)  # the queue is empty: waits, 2 s at a time
    checker = _declared(SluiceBroker(client=redis_client, heartbeat_timeout=3_000,
                                     maintenance_chance=MAINTENANCE_ALWAYS))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # over two waits: a heartbeat stamped when sent would be 4 s old
        assert checker.do_fetch(QUEUE, 1) == []  # maintenance found no dead worker to take "held" from
        time.sleep(0.1)
    assert pulling.message is None and pending_messages(idle, QUEUE) == 1
    pulling.stop()


def test_interrupt_waits_releases_blocked_consumers_which_then_fetch_nothing(redis_client: redis_lib.Redis) -> None:
    broker = _declared(SluiceBroker(client=redis_client, idle_poll_ms=10_000))
    pulling = Pulling(broker.consume(QUEUE, prefetch=2, timeout=10))
    time.sleep(0.3)
    started = time.monotonic()
    broker.interrupt_waits()
    assert _wait_until(lambda: pulling.nones >= 1, secs=2)
    assert time.monotonic() - started < 0.5
    enqueue_many(broker, QUEUE, "noop", ["z"])
    time.sleep(0.3)
    pulling.stop()
    assert pulling.message is None and ready_messages(broker, QUEUE) == 1  # left for the other workers


def test_enqueue_pushes_one_wake_token_per_message_up_to_the_cap(redis_client: redis_lib.Redis) -> None:
    broker = _declared(SluiceBroker(client=redis_client))
    enqueue_many(broker, QUEUE, "noop", ["a", "b", "c"])
    assert redis_client.llen(_wake_key(broker)) == 3
    enqueue_many(broker, QUEUE, "noop", [str(i) for i in range(WAKE_TOKENS_MAX + 50)])
    assert redis_client.llen(_wake_key(broker)) == WAKE_TOKENS_MAX
    assert 0 < redis_client.pttl(_wake_key(broker)) <= 60_000
    assert (ready_messages(broker, QUEUE), pending_messages(broker, QUEUE)) == (WAKE_TOKENS_MAX + 53,) * 2


def test_requeued_messages_wake_idle_consumers(redis_client: redis_lib.Redis) -> None:
    broker = _declared(SluiceBroker(client=redis_client))
    enqueue_many(broker, QUEUE, "noop", ["a", "b"])
    redis_client.delete(_wake_key(broker))
    consumer = broker.consume(QUEUE, prefetch=2, timeout=10)
    fetched = [next(consumer), next(consumer)]
    consumer.requeue(fetched)  # what a stopping worker does with prefetched messages
    assert ready_messages(broker, QUEUE) == 2 and redis_client.llen(_wake_key(broker)) == 2


def test_an_enqueue_is_never_seen_half_written(redis_client: redis_lib.Redis) -> None:
    """A reader between the writes of one enqueue would see message bodies without their ids in the queue."""
    broker = _declared(SluiceBroker(client=redis_client))
    reader = redis_lib.Redis.from_url(redis_url())
    seen: set[tuple[int, int]] = set()
    writing = threading.Event()
    writing.set()

    def read() -> None:
        while writing.is_set():
            pipe = reader.pipeline(transaction=True)
            pipe.llen(f"{broker.namespace}:{QUEUE}")
            pipe.hlen(f"{broker.namespace}:{QUEUE}.msgs")
            seen.add(tuple(pipe.execute()))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for _ in range(15):
            enqueue_many(broker, QUEUE, "noop", [f"{i:0>200}" for i in range(3000)])  # ~1 MB per call
    finally:
        writing.clear()
        thread.join()
        reader.close()
    assert len(seen) > 1 and all(ids == bodies for ids, bodies in seen)


def test_a_dead_workers_messages_come_back_without_waiting_for_dramatiqs_random_maintenance(
        redis_client: redis_lib.Redis) -> None:
    """dramatiq requeues a dead worker's messages in 0.1 % of fetches; an idle Sluice worker fetches every few
    seconds, so its broker also does it on a timer (every fetch after MAINTENANCE_INTERVAL_MS)."""
    dead = _declared(SluiceBroker(client=redis_client))
    enqueue_many(dead, QUEUE, "noop", [str(i) for i in range(3)])
    consumer = dead.consume(QUEUE, prefetch=3, timeout=10)
    assert [next(consumer).args[0] for _ in range(3)] == ["0", "1", "2"]  # then SIGKILLed, nothing acked
    time.sleep(0.2)
    alive = _declared(SluiceBroker(client=redis_client, heartbeat_timeout=100))  # dramatiq's default chance
    survivor = alive.consume(QUEUE, prefetch=3, timeout=10)
    assert sorted(next(survivor).args[0] for _ in range(3)) == ["0", "1", "2"]


# --- redis-py ----------------------------------------------------------------------------------------------

def _script(body: str) -> LuaScript:
    """A script no Redis has cached yet (a unique comment), so its first EVALSHA meets NOSCRIPT."""
    return LuaScript(f"-- {uuid.uuid4()}\n{body}")


def _connections(client: redis_lib.Redis, name: str) -> list[dict[str, Any]]:
    return [c for c in client.client_list() if c.get("name") == name]


REPLIES = ("return {1, 'two', {3, 'four'}, redis.status_reply('OK')}", "return 7", "return 'bytes'", "return nil")


@pytest.mark.parametrize("body", REPLIES)
def test_thread_scripts_parse_replies_like_the_client(redis_client: redis_lib.Redis, body: str) -> None:
    script = _script(body)
    assert ThreadScripts(redis_client).run(script, [], []) == redis_client.eval(script.text, 0)


def test_thread_scripts_use_the_clients_settings_and_evalsha_after_noscript(redis_client: redis_lib.Redis) -> None:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    client = redis_lib.Redis.from_url(redis_url(), client_name=name)
    scripts, script = ThreadScripts(client), _script("redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]")
    assert scripts.run(script, ["contract:key"], ["first"]) == b"first"  # NOSCRIPT, then EVAL
    assert redis_client.get("contract:key") == b"first"  # the client's database
    assert redis_client.script_exists(script.sha) == [True]
    assert scripts.run(script, ["contract:key"], [2]) == b"2"
    [connection] = _connections(redis_client, name)  # the client's name: its connection options were used
    assert connection["cmd"] == "evalsha"
    client.close()


def test_thread_scripts_keep_one_connection_per_thread(redis_client: redis_lib.Redis) -> None:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    scripts, script = ThreadScripts(redis_lib.Redis.from_url(redis_url(), client_name=name)), _script("return 1")
    counts: list[int] = []

    def run_three() -> None:
        for _ in range(3):
            scripts.run(script, [], [])
        counts.append(len(_connections(redis_client, name)))

    run_three()
    other = threading.Thread(target=run_three)
    other.start()
    other.join()
    assert counts == [1, 2]
    assert _wait_until(lambda: len(_connections(redis_client, name)) == 1)  # a finished thread's is closed


def test_thread_scripts_raise_errors_and_reconnect(redis_client: redis_lib.Redis) -> None:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    scripts = ThreadScripts(redis_lib.Redis.from_url(redis_url(), client_name=name))
    with pytest.raises(redis_lib.exceptions.ResponseError, match="boom"):
        scripts.run(_script("return redis.error_reply('boom')"), [], [])
    ok = _script("return 1")
    assert scripts.run(ok, [], []) == 1
    [connection] = _connections(redis_client, name)
    redis_client.client_kill_filter(_id=connection["id"])  # as a Redis restart or an idle timeout would
    with pytest.raises((redis_lib.exceptions.ConnectionError, OSError)):
        scripts.run(ok, [], [])
    assert scripts.run(ok, [], []) == 1


def test_sluice_redis_connections_time_out_in_the_kernel_not_in_python() -> None:
    """``shared.redis_client``: redis-py creates every socket through ``Connection._connect`` and leaves it
    blocking when ``socket_timeout`` is unset, so the kernel's timeouts set there bound every read and write."""
    client = make_redis(redis_url(), blocking_secs=1.5)
    assert client.ping()
    connection = client.connection_pool.get_connection()
    try:
        sock = connection._sock
        assert sock is not None and sock.gettimeout() is None  # blocking: no poll before each call
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            assert struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16)) == (6, 500_000)
        assert connection.can_read() is False  # the pool's idle check switches to non-blocking and back
        assert sock.gettimeout() is None
    finally:
        client.connection_pool.release(connection)
        client.close()


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h:6379/0", "unix:///tmp/redis.sock"])
def test_sluice_connection_classes_extend_the_ones_redis_py_picks_per_scheme(url: str) -> None:
    chosen = connection_class(url)
    assert issubclass(chosen, redis_lib.Redis.from_url(url).connection_pool.connection_class)
    assert chosen in {redis_client.TcpConnection, redis_client.TlsConnection, redis_client.UnixConnection}
    with pytest.raises(ValueError, match="scheme"):
        connection_class("http://h:6379/0")


# ---------------------------------------------------------------------------------------------- jsonschema

def test_jsonschema_validators_resolve_references_as_payload_schemas_read_them() -> None:
    """``shared.payload_schemas.keywords`` evaluates ``unevaluatedProperties`` with RE2 patterns and follows
    ``$ref`` there the way jsonschema's own keyword does: ``validator._resolver.lookup(ref)`` giving the
    ``contents`` and the ``resolver`` that ``evolve`` takes."""
    from jsonschema import Draft202012Validator
    from referencing import Registry

    schema = {"$defs": {"x": {"properties": {"a": {"type": "integer"}}}}, "$ref": "#/$defs/x"}
    validator = Draft202012Validator(schema, registry=Registry())
    resolved = validator._resolver.lookup("#/$defs/x")
    assert resolved.contents == schema["$defs"]["x"]
    inner = validator.evolve(schema=resolved.contents, _resolver=resolved.resolver)
    assert not inner.is_valid({"a": "text"}) and inner.is_valid({"a": 1})
