"""Dependencies at run time (§5.14): gating, release on upstream terminal, edge deletion."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from scheduler.sweeps import recheck_waiting
from shared.clock import utcnow
from shared.db.models import Run, RunEvent
from shared.dependencies.gating import Correlation, gate_new_runs
from shared.runs.effects import Effects
from shared.runs.moves import move, release_dependents, release_waiting
from shared.runs.status import RunStatus
from tests.factories import make_dependency, make_job, make_run


def test_unmet_without_upstream_run_and_met_after(session):
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up)
    assert not gate_new_runs(session, down.id, [Correlation()])[0].holds
    make_run(session, up, status="completed")
    assert gate_new_runs(session, down.id, [Correlation()])[0].holds


def test_conditions(session):
    up, down = make_job(session), make_job(session)
    edge = make_dependency(session, down, up, condition="failed")
    now = utcnow()
    make_run(session, up, status="completed", now=now - timedelta(seconds=5))
    assert gate_new_runs(session, down.id, [Correlation()])[0].holds is False
    failed = make_run(session, up, status="expired", now=now)
    verdict = gate_new_runs(session, down.id, [Correlation()])[0]
    assert verdict.holds and verdict.dependency_runs == [failed.id]
    edge.condition = "any"
    session.flush()
    assert gate_new_runs(session, down.id, [Correlation()])[0].holds


def test_correlation_by_idempotency_then_dependency_key(session):
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up)
    make_run(session, up, status="completed", idempotency_key="k1")
    make_run(session, up, status="completed", run_metadata={"dependency_key": "d1"})
    verdicts = gate_new_runs(session, down.id, [
        Correlation("k1", None), Correlation("k2", None), Correlation(None, "d1"), Correlation(None, "d2"),
        Correlation("k2", "d1"), Correlation(None, None)])
    assert [v.holds for v in verdicts] == [True, False, True, False, False, True]


def test_newest_terminal_run_decides(session):
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up)
    now = utcnow()
    make_run(session, up, status="completed", now=now - timedelta(seconds=10))
    make_run(session, up, status="failed", now=now)
    make_run(session, up, status="queued", now=now + timedelta(seconds=1))  # not terminal: ignored
    assert gate_new_runs(session, down.id, [Correlation()])[0].holds is False


def test_release_on_upstream_terminal(session):
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up)
    now = utcnow()
    waiting = make_run(session, down, status="waiting", ttl_secs=60)
    future = make_run(session, down, status="waiting", scheduled_at=now + timedelta(hours=1))
    other = make_run(session, down, status="waiting", idempotency_key="nope")
    upstream = make_run(session, up, status="executing", attempt=1, started_at=now)
    effects = Effects()
    move(session, upstream.id, RunStatus.COMPLETED, now=now, effects=effects)
    session.flush()
    session.expire_all()
    assert session.get(Run, waiting.id).status == "queued"
    assert session.get(Run, waiting.id).expires_at == now + timedelta(seconds=60)
    assert session.get(Run, future.id).status == "delayed"
    assert session.get(Run, future.id).due_at == now + timedelta(hours=1)
    assert session.get(Run, other.id).status == "waiting"
    assert effects.enqueue == [waiting.id]
    released = session.scalars(sa.select(RunEvent).where(RunEvent.run_id == waiting.id,
                                                         RunEvent.type == "released")).one()
    assert released.data == {"dependency_runs": [upstream.id]}


def test_a_finish_releases_the_keyless_waiting_runs_in_one_statement_each_with_its_own_events(session):
    """Runs released alike (no keys: the same upstream run, expiry and schedule) move together, in one
    statement per kind, in the order they were created; each still gets its own state_change and then its
    own released event."""
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up)
    now = utcnow()
    plain = [make_run(session, down, status="waiting", now=now - timedelta(seconds=60 - i)).id for i in range(12)]
    with_ttl = [make_run(session, down, status="waiting", ttl_secs=60, now=now - timedelta(seconds=40 - i)).id
                for i in range(3)]
    ahead = make_run(session, down, status="waiting", scheduled_at=now + timedelta(hours=1)).id
    upstream = make_run(session, up, status="executing", attempt=1, started_at=now)
    moves: list[str] = []

    def count(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        if "sluice_move" in statement and "EXECUTE" in statement:
            moves.append(statement)

    engine = session.get_bind()
    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        effects = Effects()
        move(session, upstream.id, RunStatus.COMPLETED, now=now, effects=effects)
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert len(moves) == 4  # the upstream run's finish, then one each: plain, with a TTL, scheduled ahead
    assert effects.enqueue == plain + with_ttl
    session.expire_all()
    for run_id in (*plain, *with_ttl, ahead):
        run = session.get(Run, run_id)
        events = session.scalars(sa.select(RunEvent).where(RunEvent.run_id == run_id)
                                 .order_by(RunEvent.created_at, RunEvent.id)).all()
        to = "delayed" if run_id == ahead else "queued"
        assert run.status == to
        assert [(e.type, e.data) for e in events[-2:]] == [
            ("state_change", {"from": "waiting", "to": to}), ("released", {"dependency_runs": [upstream.id]})]
        assert run.expires_at == (now + timedelta(seconds=60) if run_id in with_ttl else None)
    assert session.get(Run, ahead).due_at == now + timedelta(hours=1)


_NO_KEY = object()  # metadata without a dependency_key


def _metadata(dependency_key: object) -> dict[str, object]:
    return {} if dependency_key is _NO_KEY else {"dependency_key": dependency_key}


def test_a_finish_releases_what_re_evaluating_every_waiting_run_would(session):
    """A terminal move looks only at the waiting runs that can correlate with the finished run, so that a job
    whose waiting runs each wait for their own upstream run is not read whole at every finish. For every
    combination of keys a waiting run and the finished upstream run can have (no key, an empty one, equal
    or different ones, a cron tick key, a dependency key that is not a string), it releases exactly what
    re-evaluating every waiting run of the job releases."""
    up, down = make_job(session), make_job(session)
    make_dependency(session, down, up)
    now = utcnow()
    for index, (idempotency_key, dependency_key) in enumerate(
            (i, d) for i in (None, "", "k1", "k2", "cron:tick") for d in (_NO_KEY, "d1", "d2", 5, None)):
        make_run(session, down, status="waiting", idempotency_key=idempotency_key,
                 run_metadata=_metadata(dependency_key), now=now - timedelta(seconds=60 - index))
    released = []
    for idempotency_key, dependency_key in ((i, d) for i in (None, "k1", "cron:tick") for d in (_NO_KEY, "d1", 5)):
        keys = {"idempotency_key": idempotency_key, "run_metadata": _metadata(dependency_key)}
        savepoint = session.begin_nested()
        upstream = make_run(session, up, status="executing", attempt=1, started_at=now, **keys)
        by_finish = Effects()
        move(session, upstream.id, RunStatus.COMPLETED, now=now, effects=by_finish)
        savepoint.rollback()
        savepoint = session.begin_nested()
        make_run(session, up, status="completed", attempt=1, started_at=now, **keys)
        by_everything = Effects()
        release_waiting(session, down.id, now=now, effects=by_everything)
        savepoint.rollback()
        assert by_finish.enqueue == by_everything.enqueue, keys
        released.append(len(by_finish.enqueue))
    # Not vacuous: each finish releases some of the 25 waiting runs, and not the same number each time.
    assert 0 < min(released) < max(released) < 25, released


def test_release_waiting_of_job_after_edge_delete(session):
    up, down = make_job(session), make_job(session)
    edge = make_dependency(session, down, up)
    waiting = make_run(session, down, status="waiting")
    session.delete(edge)
    session.flush()
    effects = Effects()
    assert release_waiting(session, down.id, now=utcnow(), effects=effects) == 1
    assert effects.enqueue == [waiting.id]
    assert release_dependents(session, up.id, now=utcnow(), effects=Effects()) == 0


def test_recheck_waiting_recovers_a_missed_wake_up(session):
    """The race the locks leave open (an edge created while its upstream run finishes) ends with a waiting
    run whose upstream is already terminal and no release: the maintenance recheck releases it."""
    up, down, unrelated = make_job(session), make_job(session), make_job(session)
    make_dependency(session, down, up)
    make_dependency(session, unrelated, up)
    make_run(session, up, status="completed", attempt=1, started_at=utcnow(), finished_at=utcnow())
    missed = make_run(session, down, status="waiting")  # gated before the finish, never woken
    still = make_run(session, unrelated, status="waiting", idempotency_key="no-upstream-run")
    effects = Effects()
    assert recheck_waiting(session, utcnow(), effects) == (1, 2, None)
    assert effects.enqueue == [missed.id]
    session.expire_all()
    assert (session.get(Run, missed.id).status, session.get(Run, still.id).status) == ("queued", "waiting")
    assert recheck_waiting(session, utcnow(), Effects()) == (0, 1, None)


def test_recheck_waiting_is_bounded_per_pass_and_goes_on_where_it_stopped(session):
    """Seven waiting runs over two jobs, three per pass: each pass looks at the next three (the cursor
    carries over), releases what holds among them, and the pass after the last page starts over."""
    up = make_job(session)
    first, second = sorted([make_job(session), make_job(session)], key=lambda job: job.id)
    for job in (first, second):
        make_dependency(session, job, up)
    base = utcnow() - timedelta(minutes=1)
    waiting = [make_run(session, job, status="waiting", now=base + timedelta(seconds=i))
               for job in (first, second) for i in range(4 if job is first else 3)]
    make_run(session, up, status="completed", attempt=1, started_at=utcnow(), finished_at=utcnow())
    pages, cursor = [], None
    for _ in range(3):
        effects = Effects()
        released, looked_at, cursor = recheck_waiting(session, utcnow(), effects, after=cursor, limit=3)
        pages.append((released, looked_at, effects.enqueue))
        if cursor is None:
            break
    assert pages == [(3, 3, [r.id for r in waiting[:3]]), (3, 3, [r.id for r in waiting[3:6]]),
                     (1, 1, [waiting[6].id])]
    assert cursor is None
