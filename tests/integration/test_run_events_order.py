"""Events of a run list in the order they happened (CONTRACT §1.2, §4.8), even when several are written with
the same timestamp: ids made in one process sort in the order they were made."""

from __future__ import annotations

from shared.clock import utcnow
from shared.db.engine import transaction
from shared.runs.effects import Effects
from shared.runs.moves import move
from shared.runs.status import RunStatus
from tests.factories import make_job, make_run

S = RunStatus


def test_moves_written_at_one_instant_list_newest_first(client, auth, session_factory):
    now = utcnow()
    with transaction(session_factory) as s:
        job = make_job(s)
        run_ids = [make_run(s, job, status="delayed", now=now, scheduled_at=now, due_at=now, queued_at=None).id
                   for _ in range(40)]
    with transaction(session_factory) as s:  # moves back to back: many share a millisecond
        for run_id in run_ids:
            effects = Effects()
            assert move(s, run_id, S.QUEUED, now=now, effects=effects, from_=(S.DELAYED,)) is not None
            assert move(s, run_id, S.CANCELED, now=now, effects=effects, from_=(S.QUEUED,)) is not None
    for run_id in run_ids:
        events = client.get(f"/v1/runs/{run_id}/events", headers=auth).get_json()
        assert [e["data"] for e in events] == [{"from": "queued", "to": "canceled"},
                                               {"from": "delayed", "to": "queued"}]
        assert len({e["created_at"] for e in events}) == 1
