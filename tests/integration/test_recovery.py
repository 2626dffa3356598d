"""Recovery without errors: after PostgreSQL drops every connection (a restart, a failover, an operator's
``pg_terminate_backend``), the next requests and attempts succeed on fresh connections; while Redis is away,
runs wait in PostgreSQL."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis as redis_lib
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from sqlalchemy.engine import Engine
from werkzeug import Request, Response

from shared.config import Settings
from shared.db.engine import PING_AFTER_IDLE_SECS, make_engine
from shared.limits.limiter import Limits
from tests.conftest import PG_ADMIN_URL, PG_DB_NAME
from tests.factories import make_job
from tests.integration.runner_harness import Harness, make_harness
from tests.integration.servers import closed_port
from worker.actors import declare_dispatch_actor


def terminate_backends() -> int:
    """Terminate every backend of the test database but this one (a PostgreSQL restart, as the pools see it)
    and wait until they are gone."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    others = "FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"
    try:
        with admin.connect() as conn:
            pids = [pid for pid, in conn.execute(sa.text(f"SELECT pid {others}"), {"d": PG_DB_NAME})]
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:p AS int[])) AS pid"),
                         {"p": pids})
            deadline = time.monotonic() + 10
            while conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(CAST(:p AS int[]))"),
                               {"p": pids}).scalar() and time.monotonic() < deadline:
                time.sleep(0.05)
            return len(pids)
    finally:
        admin.dispose()


def test_every_request_succeeds_after_the_backends_are_terminated(client, auth, session) -> None:  # type: ignore[no-untyped-def]
    make_job(session, slug="hello")
    session.commit()
    paths = ["/v1/jobs", "/v1/jobs/hello", "/v1/runs", "/v1/jobs?limit=5", "/v1/jobs/hello/versions"]
    for _ in range(3):  # fill the pools: every pooled connection of both engines is used
        for path in paths:
            assert client.get(path, headers=auth).status_code == 200
        assert client.post("/v1/jobs/hello/trigger", headers=auth).status_code == 201
    session.close()
    assert terminate_backends() > 0
    statuses = []
    for path in paths:
        statuses.append(client.get(path, headers=auth).status_code)
    statuses.append(client.post("/v1/jobs/hello/trigger", data=json.dumps({"payload": {"n": 1}}),
                                headers={**auth, "Content-Type": "application/json"}).status_code)
    assert statuses == [200] * len(paths) + [201]


def test_no_request_meets_a_stale_pooled_connection(app, client, auth, session) -> None:  # type: ignore[no-untyped-def]
    """Every pooled connection of both API engines is stale (PostgreSQL restarted while they idled): each
    request, whichever path serves it, checks out a live one (the pools ping a connection that idled at
    checkout). Without the ping the first request on each pool fails with 503."""
    make_job(session, slug="hello")
    session.commit()
    session.close()
    services = app.extensions["sluice"]
    for engine in (services.engine, services.read_engine):
        held = [engine.connect() for _ in range(3)]
        for connection in held:
            connection.execute(sa.text("SELECT 1"))
        for connection in held:
            connection.close()
    time.sleep(PING_AFTER_IDLE_SECS)  # they idle
    assert terminate_backends() >= 6
    paths = ["/v1/jobs/hello/versions", "/v1/runs", "/v1/jobs/hello", "/v1/jobs", "/v1/jobs/hello/health"]
    assert [client.get(path, headers=auth).status_code for path in paths] == [200] * len(paths)


def test_attempts_succeed_after_the_backends_are_terminated(harness: Harness, httpserver: HTTPServer,
                                                           db_engine: Engine) -> None:
    httpserver.expect_request("/ok").respond_with_data("ok")
    job = harness.job(endpoint_url=httpserver.url_for("/ok"))
    assert harness.handle(harness.run(job).id).action == "completed"  # the worker thread holds a connection
    db_engine.dispose()
    assert terminate_backends() > 0
    run = harness.run(job)
    assert harness.handle(run.id).action == "completed"
    assert harness.get(run.id).status == "completed"


def test_a_running_attempt_recreates_the_lease_redis_lost(harness: Harness, httpserver: HTTPServer) -> None:
    """Redis loses every lease while an attempt of a ``max_concurrency: 1`` job runs: the next heartbeat
    counts the attempt again, so a second run of the job is refused instead of running beside it."""
    seen: list[int] = []
    actions: list[str] = []

    def answer(request: Request) -> Response:
        if seen:  # the refused run, handed the slot when this attempt ends
            return Response("ok")
        harness.redis.flushdb()
        seen.append(harness.limits.slots_in_use(job.id))
        harness.monitor.tick(force_heartbeat=True)
        seen.append(harness.limits.slots_in_use(job.id))
        second = harness.run(job)
        actions.append(harness.handle(second.id).action)  # refused while this attempt runs
        return Response("ok")

    httpserver.expect_request("/cap").respond_with_handler(answer)
    job = harness.job(endpoint_url=httpserver.url_for("/cap"), max_concurrency=1)
    assert harness.handle(harness.run(job).id).action == "completed"
    assert seen[:2] == [0, 1]
    assert actions == ["redelayed"]


def test_leaked_leases_of_finished_runs_are_swept(session, redis_client) -> None:  # type: ignore[no-untyped-def]
    """A worker died before releasing: the leases of finished (or deleted) runs go, a live attempt's lease,
    the lease of a run in the middle of its start and that of a run that has just finished (its release is
    on its way) stay; per-key lease sets too."""
    from scheduler.lease_sweeps import RELEASE_GRACE, sweep_leaked_leases
    from shared import redis_keys
    from shared.clock import utcnow
    from tests.factories import make_run

    now = utcnow()
    job = make_job(session, max_concurrency=1, max_concurrency_per_key=1)
    plain = make_job(session)  # no cap: not swept
    done = make_run(session, job, status="completed", attempt=1, finished_at=now - RELEASE_GRACE, concurrency_key="k")
    just_done = make_run(session, job, status="failed", attempt=1, finished_at=now - RELEASE_GRACE / 2)
    live = make_run(session, job, status="executing", attempt=1, started_at=now, heartbeat_at=now,
                    concurrency_key="k")
    starting = make_run(session, job, status="queued")
    session.commit()
    expiry = int(now.timestamp() * 1000) + 600_000
    job_key, key_key = redis_keys.concurrency_job(job.id), redis_keys.concurrency_key(job.id, "k")
    redis_client.zadd(job_key, {done.id: expiry, live.id: expiry, starting.id: expiry, just_done.id: expiry,
                                "deleted-run": expiry})
    redis_client.zadd(key_key, {done.id: expiry, live.id: expiry})
    redis_client.zadd(redis_keys.concurrency_job(plain.id), {"deleted-run": expiry})
    removed, cursor = sweep_leaked_leases(session, redis_client, now, None)
    assert (removed, cursor) == (3, None)
    assert {m.decode() for m in redis_client.zrange(job_key, 0, -1)} == {live.id, starting.id, just_done.id}
    assert {m.decode() for m in redis_client.zrange(key_key, 0, -1)} == {live.id}
    assert redis_client.zcard(redis_keys.concurrency_job(plain.id)) == 1


def _last_statement(pid: int) -> str:
    admin = sa.create_engine(PG_ADMIN_URL, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            return str(conn.execute(sa.text("SELECT query FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar())
    finally:
        admin.dispose()


def test_a_pooled_connection_is_pinged_only_after_it_idled(db_engine: Engine) -> None:
    """A ping is a round trip: a connection returned moments ago goes straight back to work (a busy API
    pays no ping per request); one that idled ``PING_AFTER_IDLE_SECS`` is pinged first."""
    engine = make_engine(db_engine.url.render_as_string(hide_password=False), pool_size=1)

    def backend_pid(conn: sa.Connection) -> int:  # psycopg2 knows it without a statement
        return int(conn.connection.dbapi_connection.get_backend_pid())  # type: ignore[union-attr]

    try:
        with engine.connect() as conn:
            pid = backend_pid(conn)
            conn.execute(sa.text("SELECT 'work'"))
        assert _last_statement(pid) == "ROLLBACK"  # the pool's reset as it was returned
        with engine.connect() as conn:
            assert backend_pid(conn) == pid and _last_statement(pid) == "ROLLBACK"  # not pinged: just returned
        time.sleep(PING_AFTER_IDLE_SECS + 0.1)
        with engine.connect() as conn:
            assert backend_pid(conn) == pid and _last_statement(pid) == "SELECT 1"  # pinged: it idled
    finally:
        engine.dispose()


def test_a_start_that_finds_redis_gone_is_a_warning_and_the_run_stays_queued(
        settings: Settings, session_factory, redis_client, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """Redis is away when a limited run starts (its limits live there): the worker logs one warning that
    names the outage, without a traceback, and the run is still queued, unstarted, for the message the
    sweeper sends again."""
    gone = redis_lib.Redis(port=closed_port(), socket_connect_timeout=1)
    harness = make_harness(settings, session_factory, redis_client, limits=Limits(gone, per_thread_connections=True))
    run = harness.run(harness.job(max_concurrency=2))
    dispatch = declare_dispatch_actor(harness.broker, harness.runner)
    with caplog.at_level(logging.INFO, logger="sluice.worker"):
        dispatch.fn(run.id)
    failed = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records
              if r.name == "sluice.worker" and r.getMessage().startswith("dispatch failed")]
    assert failed == [("WARNING", "dispatch failed: Redis unavailable", None)]
    after = harness.get(run.id)
    assert (after.status, after.attempt) == ("queued", 0)
