"""Every statement that changes ``runs.status`` is built from the transition table (``shared.runs.transitions``).

Two checks. Statically: no production module but the table's builder and the statement built from its
pieces (the worker's start) writes ``status`` into ``runs``, and runs are created only by
``shared.runs.creation``. At run time: a trigger on ``runs`` logs every status write with the query that
made it while the whole product runs — API triggers (single, delayed, bulk, with dependencies), the worker
(success, retry, failure, limits, a slot hand-off, a window, expiry at pick time), the scheduler's sweeps and
reaper, cancel, replay and a forced delete — and each write must name the table's marker (or a prepared
statement built with it) and be a move the table allows.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis as redis_lib
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from sqlalchemy.orm import Session, sessionmaker

from scheduler.reaper import reap_stale_attempts
from scheduler.sweeps import expire_unstarted, promote_due_delayed
from shared.clock import utcnow
from shared.config import Settings
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.status import CREATED, RunStatus
from shared.runs.transitions import ALLOWED_FROM, CREATION_MARKER, MARKER
from tests.integration.runner_harness import Harness

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ("api", "worker", "scheduler", "shared")
BUILDERS = {"shared/runs/transitions.py", "worker/start_statement.py"}  # statements built from the table
CREATORS = {"shared/runs/creation.py"}
# Modules whose ``.status`` assignments are not runs': the reason for each.
OTHER_STATUSES = {"worker/transport.py": "the status code of an http.client response it reads"}
TEST_SETUP = "/* test setup */"
_SQL_UPDATE = re.compile(r"UPDATE\s+runs\s+SET\s+(?P<set>.*?)(?:\bFROM\b|\bWHERE\b|$)", re.I | re.S)
_SQL_INSERT = re.compile(r"INSERT\s+INTO\s+runs\b", re.I)


def _sources() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text() for package in PRODUCTION
            for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts}


def _orm_writes(tree: ast.AST) -> list[tuple[str, set[str]]]:
    """``update(Run)``/``insert(Run)`` chains (or ``RUNS``) and the column names their ``.values()`` set."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "values"):
            continue
        chain: Any = node.func.value
        while isinstance(chain, ast.Call | ast.Attribute):
            if isinstance(chain, ast.Call) and isinstance(chain.func, ast.Attribute | ast.Name):
                name = chain.func.attr if isinstance(chain.func, ast.Attribute) else chain.func.id
                target = chain.args[0] if chain.args else None
                if name in {"update", "insert"} and isinstance(target, ast.Name) and target.id in {"Run", "RUNS"}:
                    found.append((name, {k.arg for k in node.keywords if k.arg}))
                    break
            chain = chain.func if isinstance(chain, ast.Call) else chain.value
    return found


def test_only_the_table_writes_status_and_only_creation_inserts_runs() -> None:
    offenders = []
    for path, text in _sources().items():
        for match in _SQL_UPDATE.finditer(text):
            if re.search(r'\bstatus"?\s*=', match.group("set")) and path not in BUILDERS:
                offenders.append(f"{path}: SQL UPDATE of runs.status")
        if _SQL_INSERT.search(text) and path not in CREATORS:
            offenders.append(f"{path}: SQL INSERT INTO runs")
        for kind, columns in _orm_writes(ast.parse(text)):
            if kind == "insert" and path not in CREATORS:
                offenders.append(f"{path}: insert(Run)")
            if kind == "update" and "status" in columns:
                offenders.append(f"{path}: update(Run).values(status=...)")
        for node in ast.walk(ast.parse(text)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign | ast.AnnAssign) else []
            if path not in OTHER_STATUSES and any(isinstance(t, ast.Attribute) and t.attr == "status"
                                                  for t in targets):
                offenders.append(f"{path}: assigns an object's status")
    assert offenders == []


_LOG = """
CREATE TABLE status_writes (op text, old_status text, new_status text, query text);
CREATE FUNCTION log_status_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    INSERT INTO status_writes VALUES (TG_OP, CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
                                      current_query());
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER log_status_write AFTER INSERT OR UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION log_status_write();
"""
_UNLOG = "DROP TRIGGER log_status_write ON runs; DROP FUNCTION log_status_write(); DROP TABLE status_writes;"


def _setup(session_factory: sessionmaker[Session], run_id: str, **values: Any) -> None:
    """A status the test itself writes (a worker that died mid-call), marked as the test's own."""
    assignments = ", ".join(f"{name} = :{name}" for name in values)
    with session_factory() as s:
        s.execute(sa.text(f"{TEST_SETUP} UPDATE runs SET {assignments} WHERE id = :id"), {**values, "id": run_id})
        s.commit()


def _allowed(old: str | None, new: str, query: str) -> bool:
    if TEST_SETUP in query:
        return True
    if old is None:
        return RunStatus(new) in CREATED and (CREATION_MARKER in query or "sluice_insert_run" in query)
    if "sluice_move" not in query and MARKER not in query:
        return False
    entered_from = ALLOWED_FROM[RunStatus(new)]
    # The start wakes a waiting run and starts it in one statement: delayed → queued → executing.
    return RunStatus(old) in entered_from or any(RunStatus(old) in ALLOWED_FROM[via] for via in entered_from)


def _trigger(client: Any, auth: dict[str, str], job: str, body: dict[str, Any]) -> str:
    response = client.post(f"/v1/jobs/{job}/trigger", data=json.dumps(body),
                           headers={**auth, "Content-Type": "application/json"})
    assert response.status_code in (200, 201), response.get_json()
    return str(response.get_json()["id"])


def _create_job(client: Any, auth: dict[str, str], slug: str, **fields: Any) -> None:
    body = {"name": slug, "slug": slug, **fields}
    response = client.post("/v1/jobs", data=json.dumps(body), headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 201, response.get_json()


def test_every_status_write_of_the_product_is_a_table_move(
        harness: Harness, client: Any, auth: dict[str, str], httpserver: HTTPServer, settings: Settings,
        session_factory: sessionmaker[Session], redis_client: redis_lib.Redis) -> None:
    with session_factory() as s:
        s.execute(sa.text(_LOG))
        s.commit()
    try:
        _exercise(harness, client, auth, httpserver, settings, session_factory)
        with session_factory() as s:
            writes = s.execute(sa.text("SELECT op, old_status, new_status, query FROM status_writes")).all()
    finally:
        with session_factory() as s:
            s.execute(sa.text(_UNLOG))
            s.commit()
    moves = {(old, new) for _, old, new, _ in writes}
    assert {(None, "queued"), (None, "delayed"), (None, "waiting"), ("waiting", "queued"), ("queued", "executing"),
            ("executing", "completed"), ("executing", "delayed"), ("executing", "failed"), ("queued", "delayed"),
            ("delayed", "queued"), ("queued", "canceled"), ("executing", "canceled"), ("delayed", "expired"),
            ("queued", "expired"), ("delayed", "executing")} <= moves, moves
    assert [(old, new, query[:120]) for _, old, new, query in writes if not _allowed(old, new, query)] == []


def _exercise(harness: Harness, client: Any, auth: dict[str, str], httpserver: HTTPServer, settings: Settings,
              session_factory: sessionmaker[Session]) -> None:
    httpserver.expect_request("/ok").respond_with_data("{}", content_type="application/json")
    httpserver.expect_request("/busy").respond_with_data("busy", status=503)
    httpserver.expect_request("/bad").respond_with_data("no", status=400)
    ok, busy, bad = (httpserver.url_for(p) for p in ("/ok", "/busy", "/bad"))
    _create_job(client, auth, "up", endpoint_url=ok)
    _create_job(client, auth, "down", endpoint_url=ok)
    up_id = client.get("/v1/jobs/up", headers=auth).get_json()["id"]
    assert client.post("/v1/jobs/down/dependencies", data=json.dumps({"depends_on_job_id": up_id}),
                       headers={**auth, "Content-Type": "application/json"}).status_code == 201
    _create_job(client, auth, "busy", endpoint_url=busy, max_attempts=2, retry_strategy="fixed")
    _create_job(client, auth, "bad", endpoint_url=bad)
    _create_job(client, auth, "capped", endpoint_url=ok, max_concurrency=1)
    _create_job(client, auth, "later", endpoint_url=ok, run_ttl_secs=1)

    waiting = _trigger(client, auth, "down", {})  # created waiting: "up" has no run yet
    upstream = _trigger(client, auth, "up", {})
    assert harness.handle(upstream).run_id == upstream  # completes; "down" is released (waiting → queued)
    assert harness.handle(waiting).action == "completed"
    retried = _trigger(client, auth, "busy", {})
    assert harness.handle(retried).action == "delayed"  # executing → delayed (retry)
    harness.promote(retried)  # delayed → queued
    assert harness.handle(retried).action == "failed"
    assert harness.handle(_trigger(client, auth, "bad", {})).action == "failed"
    bulk = client.post("/v1/jobs/capped/trigger/bulk", data=json.dumps({"items": [{}, {}]}),
                       headers={**auth, "Content-Type": "application/json"})
    assert bulk.status_code in (200, 201), bulk.get_json()
    holder, waiter = (item["id"] for item in bulk.get_json()["results"])
    harness.limits.acquire(_lease(harness, holder))  # the cap is full: the waiter is refused
    assert harness.handle(waiter).action == "redelayed"  # queued → delayed, registered as a slot waiter
    harness.limits.release(holder, _job_id(session_factory, holder), None)
    assert harness.handle(holder).action == "completed"  # ... and its end hands the slot over: delayed → executing
    assert harness.get(waiter).status == "completed"

    scheduled = _trigger(client, auth, "later", {"scheduled_at": (utcnow() + timedelta(hours=1)).isoformat()})
    expiring = _trigger(client, auth, "later", {})
    now = utcnow() + timedelta(hours=2)
    with session_factory() as s:
        effects = Effects()
        expire_unstarted(s, now, effects)  # both: delayed → expired, queued → expired
        commit_and_apply(s, effects, harness.broker)
    assert harness.get(scheduled).status == "expired" and harness.get(expiring).status == "expired"

    _create_job(client, auth, "slow", endpoint_url=busy, max_attempts=3)
    stale = _trigger(client, auth, "slow", {})
    assert harness.handle(stale).action == "delayed"
    with session_factory() as s:
        effects = Effects()
        promote_due_delayed(s, utcnow() + timedelta(hours=1), effects)
        commit_and_apply(s, effects, harness.broker)
    assert harness.get(stale).status == "queued"
    _setup(session_factory, stale, status="executing", attempt=2, heartbeat_at=utcnow() - timedelta(hours=1))
    with session_factory() as s:
        effects = Effects()
        assert reap_stale_attempts(s, utcnow(), settings, harness.limits, effects) == [stale]  # → delayed
        commit_and_apply(s, effects, harness.broker)

    canceled = _trigger(client, auth, "slow", {})
    assert client.post(f"/v1/runs/{canceled}/cancel", headers=auth).status_code == 200  # queued → canceled
    _setup(session_factory, stale, status="executing")  # as if a worker held it again
    assert client.post(f"/v1/runs/{stale}/cancel", headers=auth).status_code == 200  # executing → canceled
    replayed = client.post(f"/v1/runs/{canceled}/replay", headers=auth)
    assert replayed.status_code in (200, 201), replayed.get_json()
    assert client.delete("/v1/jobs/slow?force=true", headers=auth).status_code in (200, 204)


def _lease(harness: Harness, run_id: str) -> Any:
    from shared.limits.limiter import LimitRequest

    with harness.session_factory() as s:
        job_id = s.execute(sa.text("SELECT job_id FROM runs WHERE id = :id"), {"id": run_id}).scalar_one()
    return LimitRequest(run_id=run_id, job_id=job_id, max_concurrency=1, concurrency_key=None,
                        max_concurrency_per_key=None, lease_ms=60_000)


def _job_id(session_factory: sessionmaker[Session], run_id: str) -> str:
    with session_factory() as s:
        return str(s.execute(sa.text("SELECT job_id FROM runs WHERE id = :id"), {"id": run_id}).scalar_one())
