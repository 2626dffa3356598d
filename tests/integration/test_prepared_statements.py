"""The worker's hot path on prepared statements (shared.db.prepared), as `sluice worker` runs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as redis_lib
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from sqlalchemy.engine import Engine

from shared.clock import utcnow
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory
from shared.db.models import RunEvent, WebhookDelivery
from shared.db.prepared import PreparedStatement, execute_prepared
from shared.runs.attempts import AttemptEnd, RetryPolicy, finish_attempt
from shared.runs.effects import Effects
from shared.runs.retries import SUCCESS, Outcome
from tests.integration.runner_harness import Harness, make_harness
from worker.connection import ThreadConnection
from worker.main import steer_claim_plans


@pytest.fixture(name="prepared_harness")
def prepared_harness_fixture(settings: Settings, db_engine: Engine,
                             redis_client: redis_lib.Redis) -> Iterator[Harness]:
    engine = make_engine(db_engine.url.render_as_string(hide_password=False), pool_size=2, pre_ping=False)
    steer_claim_plans(engine)
    harness = make_harness(settings, make_session_factory(engine), redis_client)
    harness.monitor.start()
    try:
        yield harness
    finally:
        harness.monitor.stop()
        engine.dispose()


def _prepared_names(harness: Harness) -> set[str]:
    with harness.session_factory() as s:
        return set(s.execute(sa.text("SELECT name FROM pg_prepared_statements")).scalars())


def test_attempts_run_on_prepared_statements(prepared_harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/ok").respond_with_json({"ok": True})
    httpserver.expect_request("/hook").respond_with_data("")
    job = prepared_harness.job(endpoint_url=httpserver.url_for("/ok"), webhook_url=httpserver.url_for("/hook"))
    runs = [prepared_harness.run(job) for _ in range(3)]
    for run in runs:
        assert prepared_harness.handle(run.id).action == "completed"
    assert prepared_harness.handle(runs[0].id).action == "idle"
    for run in runs:
        got = prepared_harness.get(run.id)
        assert (got.status, got.attempt, got.result) == ("completed", 1, {"ok": True})
        types = [e.type for e in prepared_harness.events(run.id)]
        assert types == ["state_change", "attempt_started", "state_change", "attempt_finished"]
    with prepared_harness.session_factory() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 3
        changes = s.execute(sa.select(RunEvent.data).where(RunEvent.type == "state_change",
                                                           RunEvent.run_id == runs[0].id)).scalars().all()
    assert sorted(c["to"] for c in changes) == ["completed", "executing"]
    # A webhook is due, so the outcome is recorded in a transaction on the pool's connections, which keep
    # their prepared statements (the claim and start ran as one statement: tests/integration/test_worker_direct.py).
    assert any(name.startswith("sluice_move_") for name in _prepared_names(prepared_harness))


def test_retry_is_scheduled_with_prepared_statements(prepared_harness: Harness, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/fail").respond_with_data("no", status=503)
    job = prepared_harness.job(endpoint_url=httpserver.url_for("/fail"), max_attempts=3)
    run = prepared_harness.run(job)
    assert prepared_harness.handle(run.id).action == "delayed"
    got = prepared_harness.get(run.id)
    assert (got.status, got.attempt, got.error_class) == ("delayed", 1, "server")
    assert got.next_retry_at is not None and got.due_at == got.next_retry_at
    assert [e.type for e in prepared_harness.events(run.id)][-1] == "retry_scheduled"


def test_late_outcome_writes_nothing(prepared_harness: Harness) -> None:
    """The move's events select FROM the UPDATE: an outcome for a superseded attempt leaves no trace."""
    run = prepared_harness.run(prepared_harness.job())
    prepared_harness.update_run(run.id, status="executing", attempt=2)
    with prepared_harness.session_factory() as s:
        end = AttemptEnd(attempt=1, outcome=Outcome(SUCCESS, None, None, http_status=200))
        assert finish_attempt(s, run.id, end, policy=RetryPolicy(3, "exponential", ()), now=utcnow(),
                              effects=Effects()) is None
        s.commit()
    got = prepared_harness.get(run.id)
    assert (got.status, got.attempt, got.finished_at) == ("executing", 2, None)
    assert prepared_harness.events(run.id) == []


_PROBE = PreparedStatement.build("sluice_probe_statement", "SELECT count(*) FROM runs WHERE status = :status")


def test_every_path_shares_one_registry_of_prepared_statements(db_engine: Engine) -> None:
    """A statement prepared by the session path is not prepared again by a worker thread's connection on
    the same pooled connection, and the other way round (PostgreSQL refuses a second PREPARE of a name)."""
    engine = make_engine(db_engine.url.render_as_string(hide_password=False), pool_size=1, pre_ping=False)
    try:
        with engine.connect() as connection:  # the session path prepares it first
            assert execute_prepared(connection, _PROBE, {"status": "queued"}).scalar() == 0
        thread_connection = ThreadConnection(engine)  # the pool's one connection, now held by a thread
        assert thread_connection.first(_PROBE, {"status": "queued"}) == (0,)
        thread_connection.close()
        with engine.connect() as connection:
            assert execute_prepared(connection, _PROBE, {"status": "delayed"}).scalar() == 0
    finally:
        engine.dispose()


PID = PreparedStatement.build("sluice_probe_pid", "SELECT pg_backend_pid()")


def test_a_dropped_connection_is_replaced_and_its_statements_prepared_again(db_engine: Engine) -> None:
    engine = make_engine(db_engine.url.render_as_string(hide_password=False), pool_size=1, pre_ping=False)
    thread_connection = ThreadConnection(engine)
    try:
        assert thread_connection.first(_PROBE, {"status": "queued"}) == (0,)
        [pid] = thread_connection.first(PID, {}) or ()
        with db_engine.connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # The server dropped it: the statement goes once more on a fresh connection, prepared anew there.
        assert thread_connection.first(_PROBE, {"status": "queued"}) == (0,)
        [fresh] = thread_connection.first(PID, {}) or ()
        assert fresh != pid
        thread_connection.close()
        with engine.connect() as connection:  # and the pool's paths agree with it
            assert execute_prepared(connection, _PROBE, {"status": "queued"}).scalar() == 0
    finally:
        engine.dispose()
