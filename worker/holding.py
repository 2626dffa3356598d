"""Holding the ready runs of a disabled job (CONTRACT §5.12): they stay ``queued``, undispatched.

When a message's own run is not the one it starts (another ready run was started instead, or nothing),
that run may be ready but its job disabled: it is marked held (``held_at``, event ``held``) then, once, so
the sweeper stops re-creating its message; enabling the job clears the mark and enqueues it again
(``shared.jobs.enablement``). Holding is not a status change.
"""

from __future__ import annotations

from datetime import datetime

from shared.db.prepared import PreparedStatement
from shared.runs.transitions import event_ids
from worker.connection import ThreadConnection

HOLD = PreparedStatement.build("sluice_hold_run", """
WITH held AS (
    UPDATE runs SET held_at = CAST(:now AS timestamptz)
    WHERE id = :run_id AND status = 'queued' AND held_at IS NULL
      AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = runs.job_id AND jobs.enabled IS false)
    RETURNING runs.id
), logged AS (
    INSERT INTO run_events (id, run_id, type, message, data, created_at)
    SELECT :event_id, held.id, 'held', NULL, '{}'::jsonb, CAST(:now AS timestamptz) FROM held
)
SELECT held.id FROM held
""")


def hold_if_disabled(connection: ThreadConnection, run_id: str, now: datetime) -> bool:
    """Mark ``run_id`` held if it is queued, not yet held, and its job is disabled; whether it did."""
    return connection.first(HOLD, {"run_id": run_id, "now": now, "event_id": event_ids(1)[0]}) is not None
