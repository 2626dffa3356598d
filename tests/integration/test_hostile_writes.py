"""Hostile writes: a batch of jobs whose hosts sit behind a name server that never answers is answered
within one lookup deadline, not one lookup after another."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from shared.db.locks import STRIPES
from shared.egress import addresses
from shared.egress.lookups import BUDGET_SECS


@pytest.fixture()
def policed_client(settings):  # type: ignore[no-untyped-def]
    """The API with the address policy on (the suite's default allows private endpoints)."""
    from api.app import create_app

    app = create_app(settings.with_overrides(allow_private_endpoints=False))
    yield app.test_client()
    app.extensions["sluice"].close()


def _slow_name_server(monkeypatch: pytest.MonkeyPatch, delay_secs: float) -> list[str]:
    asked: list[str] = []
    lock = threading.Lock()

    def resolve(host: str, port: int) -> list[str]:
        with lock:
            asked.append(host)
        if host.startswith("internal"):
            return ["10.0.0.7"]
        time.sleep(delay_secs)
        return ["93.184.216.34"]

    monkeypatch.setattr(addresses, "default_resolver", resolve)
    return asked


def test_a_batch_waits_for_its_lookups_once_not_one_after_another(policed_client, auth, monkeypatch):
    asked = _slow_name_server(monkeypatch, delay_secs=2.0)
    jobs = [{"name": f"n{i}", "slug": f"slow-{i}", "endpoint_url": f"https://h{i}.example/run",
             "webhook_url": f"https://hook{i}.example/w"} for i in range(40)]
    started = time.monotonic()
    response = policed_client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=auth)
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.get_json()
    assert elapsed < BUDGET_SECS + 3, elapsed  # one after another: 80 lookups x 2 s
    assert 8 <= len(set(asked)) <= 80  # looked up at once on the pool; those left at the deadline withdrawn


def test_the_policy_still_refuses_what_resolves_in_time(policed_client, auth, monkeypatch):
    _slow_name_server(monkeypatch, delay_secs=0.0)
    jobs = [{"name": "a", "slug": "a", "endpoint_url": "https://fine.example/"},
            {"name": "b", "slug": "b", "endpoint_url": "https://internal.example/"}]
    response = policed_client.post("/v1/jobs/batch", json={"jobs": jobs}, headers=auth)
    assert response.status_code == 422
    assert response.get_json()["errors"] == {"jobs": {"1": {"endpoint_url": [
        "endpoint_url: host resolves to a private address"]}}}
    single = policed_client.post("/v1/jobs", json={"name": "c", "slug": "c", "endpoint_url": "https://internal.x/"},
                                 headers=auth)
    assert single.status_code == 400
    assert single.get_json()["message"] == "endpoint_url: host resolves to a private address"


def _advisory_locks(session) -> int:  # type: ignore[no-untyped-def]
    return int(session.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                       "AND pid = pg_backend_pid()")).scalar_one())


def test_a_bulk_trigger_takes_a_bounded_lock_set_in_one_statement_each(session):
    from shared.clock import utcnow
    from shared.runs.effects import Effects
    from shared.triggers.bulk import trigger_bulk
    from tests import factories

    job = factories.make_job(session, dedup_window_secs=600)
    session.commit()
    items = [{"payload": {"n": i}, "idempotency_key": f"key-{i}"} for i in range(1000)]
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_rest) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    engine = session.get_bind()
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        outcome = trigger_bulk(session, job, items, actor="apikey:test", now=utcnow(), effects=Effects())
        assert outcome.created == 1000
        assert _advisory_locks(session) <= 2 * STRIPES  # not one per key and per payload hash (2,000)
        assert len([s for s in statements if "pg_advisory_xact_lock" in s]) == 2
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
        session.rollback()
