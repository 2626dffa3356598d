"""An idle worker process costs (almost) nothing and wakes at once: a real worker process (``run_worker_process``)
against a private ``redis-server``, so that every Redis command counted is the worker's."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis as redis_lib
from sqlalchemy.orm import Session, sessionmaker

from shared.cli.embedded_redis import EmbeddedRedis, start_embedded_redis
from shared.config import Settings
from shared.db.models import Run
from shared.messages.broker import make_broker
from shared.messages.enqueue import enqueue_runs
from tests import factories
from tests.integration.servers import RawServer, keep_alive
from worker.main import run_worker_process

IDLE_SECS = 3.0


@pytest.fixture(name="private_redis")
def private_redis_fixture() -> Iterator[EmbeddedRedis]:
    server = start_embedded_redis("redis-server")
    yield server
    server.stop()


def _commands(client: redis_lib.Redis) -> int:
    """Commands the server executed so far, ``INFO`` itself left out."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))


def test_an_idle_worker_process_blocks_in_redis_and_wakes_on_a_trigger(
        settings: Settings, session_factory: sessionmaker[Session], private_redis: EmbeddedRedis) -> None:
    settings = settings.with_overrides(redis_url=private_redis.url)
    client = redis_lib.Redis.from_url(private_redis.url)
    stop = threading.Event()
    returned = threading.Event()

    def work() -> None:
        run_worker_process(settings, threads=4, stop=stop)  # default idle poll; both queues
        returned.set()

    with RawServer(keep_alive()) as endpoint:
        with session_factory() as s:
            run = factories.make_run(s, factories.make_job(s, endpoint_url=endpoint.url()))
            s.commit()
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            time.sleep(1.5)  # started: each consumer fetched once and blocks
            before, cpu_before = _commands(client), time.process_time()
            time.sleep(IDLE_SECS)
            idle_commands, idle_cpu = _commands(client) - before, time.process_time() - cpu_before
            # Polling every 10 ms made ~600 calls per queue in 3 s; blocking makes at most one look per queue
            # (BLPOP, the fetch script counted as EVALSHA, ZADD and LPOP) and one dead-worker check (2).
            assert idle_commands <= 12, idle_commands
            assert idle_cpu < 0.05 * IDLE_SECS, idle_cpu  # the whole test process, worker threads included

            started = time.monotonic()
            enqueue_runs(make_broker(settings, client=client), [run.id])
            while not endpoint.requests and time.monotonic() - started < 10:
                time.sleep(0.002)
            assert endpoint.requests, "the run never reached its endpoint"
            assert time.monotonic() - started < 1.0  # woken: the idle poll alone would take up to 5 s
        finally:
            stopping = time.monotonic()
            stop.set()
            assert returned.wait(15)
        assert time.monotonic() - stopping < 3.0  # shutdown ends the blocked waits at once
    with session_factory() as s:
        done = s.get(Run, run.id)
        assert done is not None and done.status == "completed"
    client.close()
