"""The start statement stays cheap behind a backlog and with many projects ready.

A worker runs the start statement as a prepared statement, which PostgreSQL plans generically (without the
parameters' values) once the custom plans cost no less. A generic plan that scans ``runs`` costs a start the
whole table: with 50,000 queued runs, 15 ms of database CPU a start instead of 0.3 ms. So each form is planned
generically here, against a backlog the statistics know of, and no node may read ``runs`` sequentially.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.db.models import Run
from shared.db.prepared import PreparedStatement
from shared.runs.transitions import event_ids
from tests.factories import make_job, make_run
from worker.start import WAKE_MESSAGE
from worker.start_statement import FAIR_WINDOW, start_statements

BACKLOG = 20_000


def _params(hint: str, *, project_cap: bool) -> dict[str, Any]:
    ids = event_ids(3)
    return {"hint": hint, "origin": None, "best": True, "wake": False, "window_open_id": None,
            "settings_checked_id": None, "snapshot_version": None, "snapshot_endpoint": None,
            "wake_message": WAKE_MESSAGE,
            "project_max_executing": 5 if project_cap else None, "in_transaction": False, "now": utcnow(),
            "e0_id": ids[0], "e1_id": ids[1], "e2_id": ids[2]}


def _plan(session: Session, statement: PreparedStatement, params: dict[str, Any], options: str) -> Any:
    """The plan of ``statement`` prepared under a name of its own, as ``EXPLAIN (<options>, FORMAT JSON)``."""
    connection = session.connection()
    connection.exec_driver_sql(f"PREPARE plan_probe AS {statement.positional_sql}")
    call, values = statement.execute_call(params)
    plan = connection.exec_driver_sql(
        f"EXPLAIN ({options}, FORMAT JSON) {call.replace(statement.name, 'plan_probe')}", values).scalar()
    connection.exec_driver_sql("DEALLOCATE plan_probe")
    return plan[0]["Plan"]


def _sequential_scans(plan: Any) -> list[str]:
    scans, nodes = [], [plan]
    while nodes:
        node = nodes.pop()
        if node["Node Type"] == "Seq Scan" and node["Relation Name"] == "runs":
            scans.append(node.get("Alias", "runs"))
        nodes += node.get("Plans", [])
    return scans


@pytest.mark.parametrize("form", ["hinted", "full"])
@pytest.mark.parametrize("project_cap", [False, True], ids=["uncapped", "capped"])
def test_a_start_walks_indexes_behind_a_backlog(session: Session, form: str, project_cap: bool) -> None:
    statement = getattr(start_statements(project_cap=project_cap), form)
    job = make_job(session)
    template = make_run(session, job)
    session.flush()
    # The backlog: copies of one queued run, older than the run the message names.
    columns = [c.name for c in Run.__table__.columns if c.name != "id"]
    session.execute(sa.text(
        f"INSERT INTO runs (id, {', '.join(columns)}) "
        f"SELECT left(r.id, 24) || lpad(n::text, 12, '0'), {', '.join('r.' + c for c in columns)} "
        "FROM runs r CROSS JOIN generate_series(1, :n) n WHERE r.id = :id"), {"n": BACKLOG, "id": template.id})
    hint = make_run(session, job)
    session.flush()
    session.execute(sa.text("ANALYZE runs"))
    session.connection().exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
    plan = _plan(session, statement, _params(hint.id, project_cap=project_cap), "COSTS")
    assert _sequential_scans(plan) == []


@pytest.mark.parametrize("form", ["hinted", "full"])
def test_a_run_of_an_idle_project_starts_at_once_beside_other_projects(session: Session, form: str) -> None:
    """With many projects ready at one priority, a message's run whose project has no executing attempt
    may go (no project can have fewer): either form starts it, and the full form without making every
    project's share, which costs a start an index descent and a count per project (with 1,000 projects,
    13 ms of database CPU). The hinted form starting it spares the full form's round trip."""
    rivals = [make_job(session, project_id=f"rival-{i:03d}") for i in range(50)]
    for job in rivals:
        make_run(session, job)
    idle = make_job(session, project_id="idle")
    hint = make_run(session, idle)
    session.flush()
    statement = getattr(start_statements(project_cap=False), form)
    plan = _plan(session, statement, _params(hint.id, project_cap=False), "ANALYZE")
    ctes = {node["Subplan Name"]: node for node in plan["Plans"] if "Subplan Name" in node}
    assert ctes["CTE picked"]["Actual Rows"] == 1
    assert session.get(Run, hint.id, populate_existing=True).status == "executing"
    if form == "full":
        # Neither the shares nor the walk over the projects that makes their window ran.
        assert [ctes[f"CTE {name}"]["Actual Loops"] for name in ("shares", "after", "wrapped")] == [0, 0, 0]


def test_a_busy_projects_run_compares_a_bounded_window_of_projects(session: Session) -> None:
    """A run whose project is busy, with many other projects ready: the full form makes the shares of at most
    ``FAIR_WINDOW`` projects (one index descent, a head and a count each), not of every project."""
    busy = make_job(session, project_id="busy")
    make_run(session, busy, status="executing", attempt=1)
    hint = make_run(session, busy)
    for i in range(3 * FAIR_WINDOW):
        make_run(session, make_job(session, project_id=f"rival-{i:03d}"))
    session.flush()
    plan = _plan(session, start_statements(project_cap=False).full, _params(hint.id, project_cap=False), "ANALYZE")
    ctes = {node["Subplan Name"]: node for node in plan["Plans"] if "Subplan Name" in node}
    assert ctes["CTE picked"]["Actual Rows"] == 1
    assert session.get(Run, hint.id, populate_existing=True).status == "queued"  # a rival's run went instead
    assert 1 < ctes["CTE shares"]["Actual Rows"] <= FAIR_WINDOW


def test_a_woken_waiter_compares_its_project_with_the_one_other_project_waiting(session: Session) -> None:
    """A slot waiter (``delayed``) is not among the ready runs that make the window, so a window of one
    project can be another project's: its executing attempts are counted too, and the waiter of a project no
    busier than that one is woken and started."""
    own = make_job(session, project_id="own")
    make_run(session, own, status="executing", attempt=1)
    waiter = make_run(session, own, status="delayed", attempt=1)
    other = make_job(session, project_id="other")
    for _ in range(2):
        make_run(session, other, status="executing", attempt=1)
    rival = make_run(session, other)
    session.flush()
    _plan(session, start_statements(project_cap=False).full, {**_params(waiter.id, project_cap=False), "wake": True},
          "ANALYZE")
    assert session.get(Run, waiter.id, populate_existing=True).status == "executing"
    assert session.get(Run, rival.id, populate_existing=True).status == "queued"
