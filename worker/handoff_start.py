"""The hand-off's start of a waiting run on the worker's direct connection (PostgreSQL).

When an attempt ends and a run waits for its slot (``worker.handoff``), the waiter is woken and started in
one statement inside a transaction, and the limit script — with the ended attempt's leases handed over —
decides whether that start stands, exactly as ``worker.limited_start`` does for a claimed run::

    BEGIN; EXECUTE handoff_start(…)    -- locks the waiter; delayed → queued → executing, three events
    <Redis: acquire with hand-over: the ended attempt's leases are dropped and this run's taken, atomically>
    COMMIT                             -- or ROLLBACK: refused by a limit of its own (see below)

The statement starts the waiter only when nothing but its limits could refuse it (the claim statement's
conditions, ``worker.fast_start.STARTABLE_SQL``) and it still waits for a slot: ``queued`` and not held,
or ``delayed`` with no retry back-off ahead, of an enabled job. Any other waiter — expired, a window, a
pinned older version, no longer waiting — gets no row, and the hand-off takes its session path, which
decides (``worker.admission``). So does a waiter that another of its own limits refuses (rare: e.g. its
per-key cap is also full): the start is rolled back and the session path records the refusal
(``redelayed`` with the binding limit) as it always has; the handed-over leases are already gone.

This saves the hand-off's ORM load and two round trips: the gap between a slot's call ending and the next
call starting is most of the cost of a tight cap (docs/flow-control.md).
"""

from __future__ import annotations

from datetime import datetime

from shared.config import Settings
from shared.db.prepared import HotStatement
from shared.ids import uuid7
from shared.limits.limiter import Limits
from shared.limits.waiters import WAKE_MESSAGE
from worker.direct import DirectStatements
from worker.fast_start import CLAIM_COLUMNS, LIMITS_SQL, STARTABLE_SQL, STRIP_USERINFO_SQL, FastClaim, claim_of_row
from worker.limited_start import UNUSABLE, acquire_or_undo, limit_request

_NOW = "CAST(:now AS timestamptz)"
_SQL = f"""
WITH picked AS (
    SELECT r.id, r.status, r.job_id, r.payload, r.concurrency_key, r.debug_mode, r.queued_at,
           r.max_attempts_override, r.timeout_secs_override, j.endpoint_url, j.fallback_endpoint_url,
           j.timeout_secs, j.max_attempts, j.retry_strategy, j.retry_delays_secs, j.version, j.version_id,
           j.webhook_secret, {LIMITS_SQL} AS limits
    FROM runs r JOIN jobs j ON j.id = r.job_id
    -- "IS TRUE" keeps the planner off the partial ready index: this is one primary-key lookup.
    WHERE r.id = :run_id AND (r.status IN ('queued', 'delayed')) IS TRUE AND r.held_at IS NULL
      AND (r.status = 'queued' OR r.next_retry_at IS NULL OR r.next_retry_at <= {_NOW})
      AND j.enabled IS true AND {STARTABLE_SQL}
    -- Blocking: a worker refusing this very run holds it only until its re-delay commits.
    FOR UPDATE OF r
), moved AS (
    UPDATE runs SET status = 'executing', attempt = runs.attempt + 1, started_at = {_NOW},
                    heartbeat_at = {_NOW}, next_retry_at = NULL, due_at = NULL,
                    queued_at = CASE WHEN picked.status = 'delayed' THEN {_NOW} ELSE runs.queued_at END
    FROM picked WHERE runs.id = picked.id
    RETURNING runs.id, runs.attempt, runs.queued_at
), logged AS (
    INSERT INTO run_events (id, run_id, type, message, data, created_at)
    SELECT :e0_id, moved.id, 'state_change', :wake_message,
           CAST('{{"from": "delayed", "to": "queued"}}' AS jsonb), {_NOW}
    FROM moved JOIN picked ON picked.id = moved.id WHERE picked.status = 'delayed'
    UNION ALL
    SELECT :e1_id, moved.id, 'state_change', NULL, CAST('{{"from": "queued", "to": "executing"}}' AS jsonb),
           {_NOW} FROM moved
    UNION ALL
    SELECT :e2_id, moved.id, 'attempt_started', NULL,
           jsonb_build_object('attempt', moved.attempt, 'job_version', picked.version,
                              'endpoint_url', {STRIP_USERINFO_SQL}),
           {_NOW} FROM moved JOIN picked ON picked.id = moved.id
)
SELECT {", ".join("moved.queued_at" if c == "queued_at" else f"picked.{c}" for c in CLAIM_COLUMNS)},
       moved.attempt, picked.limits
FROM picked JOIN moved ON moved.id = picked.id
"""

HANDOFF_START = HotStatement.build("sluice_handoff_start_v1", _SQL)


class DirectHandOffStart:
    """Wakes and starts one waiter with an ended attempt's leases; thread-safe."""

    def __init__(self, direct: DirectStatements, *, limits: Limits, settings: Settings) -> None:
        self._direct = direct
        self._limits = limits
        self._lease_margin_secs = settings.lease_margin_secs

    def start(self, waiter_id: str, ended: tuple[str, str | None], now: datetime) -> FastClaim | None:
        """Start ``waiter_id`` with the leases of ``ended`` (run id, concurrency key): the started claim,
        or ``None`` when this path did not start it (nothing written) and the session path decides."""
        ids = sorted(uuid7() for _ in range(3))  # ids sort in write order (created_at, id)
        row = self._direct.begin_first(HANDOFF_START, {"run_id": waiter_id, "now": now, "wake_message": WAKE_MESSAGE,
                                                       "e0_id": ids[0], "e1_id": ids[1], "e2_id": ids[2]})
        if row is None:
            self._direct.rollback()
            return None
        claim = claim_of_row(row)
        limits = claim.limits
        assert limits is not None and claim.attempt is not None
        try:
            settings, request = limit_request(claim, limits, self._lease_margin_secs, hand_over=ended)
        except UNUSABLE:
            self._direct.rollback()
            return None
        if not acquire_or_undo(self._direct, self._limits, request).admitted:
            return None
        claim.settings = settings  # release_late stays False: a slot someone waited for is handed on at once
        return claim
