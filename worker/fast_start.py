"""Claim a best ready run and start its attempt in one statement, when nothing can stop the start.

``worker.claim`` + ``worker.admission`` take the best ready run (CONTRACT §5.1 step 1, §5.11) and then
check expiry, execution settings, window and limits before ``queued → executing`` (steps 3–8). Most runs
pass every check without any of them being able to refuse: a run that cannot have expired, of a job with no
window, no concurrency or rate limit, whose settings come from the live job. For those, the checks are
plain column tests, so one statement does it all — as one autocommit transaction (``worker.direct``)::

    WITH hinted AS (<the message's run, if ready and no ready run has a higher priority>
                    FOR UPDATE OF runs SKIP LOCKED),
         best   AS (<the claim's WHERE and ORDER BY> LIMIT 1 FOR UPDATE OF runs SKIP LOCKED),
         picked AS (SELECT * FROM hinted UNION ALL SELECT * FROM best LIMIT 1),   -- best: only if needed
         moved  AS (UPDATE runs SET status = 'executing', attempt = attempt + 1, …
                    FROM picked WHERE runs.id = picked.id AND picked.fast AND <status is queued> …),
         logged AS (INSERT INTO run_events … state_change, attempt_started … FROM moved)
    SELECT picked.*, moved.attempt FROM picked LEFT JOIN moved …

Which run: §5.11 asks for higher priority first, then order of readiness *best effort across workers*.
The message's own run is a best ready run unless some ready run has a higher priority (an index range that
is empty in the common case), and messages leave the queue in readiness order; claiming it by primary key
spares every claim the scan past the rows other workers hold locked and past the index entries of runs
claimed since the last vacuum (both grow with concurrency and backlog). Otherwise — a higher-priority
run is ready, or the message's run is gone (a duplicate message, or claimed by another message) — the
statement takes the best ready run as ``claim_ready_run`` does, so every message still claims something
while anything is claimable.

The guarantees are the claim's: ``SKIP LOCKED`` plus the conditional update mean a duplicate message never
starts a second attempt; the events are written by the same statement (§4.7). When the picked run is *not*
fast, nothing is written and its lock ends with the statement. A run that only its job's limits could refuse
comes back with what the limit check needs (``limits``); sent inside a transaction (``in_transaction``) the
statement starts such a run as well, uncommitted, and ``worker.limited_start`` lets the limit script decide
between ``COMMIT`` and ``ROLLBACK``. Any other run goes to the checked path (``claim_ready_run`` +
``admit``), which takes the best ready run.

The job's execution settings are validated again in Python (``live_settings``, the checked path's rules);
the SQL conditions only make that validation the formality it is for rows the API wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db.prepared import HotStatement
from shared.ids import uuid7
from shared.runs.execution_settings import ExecutionSettings
from shared.runs.retries import STRATEGIES
from worker.direct import DirectStatements

_STRATEGIES = ", ".join(f"'{s}'" for s in (*STRATEGIES, ""))
# shared.egress.addresses.strip_userinfo, as a PostgreSQL regular expression (first match only, like count=1).
STRIP_USERINFO_SQL = r"regexp_replace(picked.endpoint_url, '^([A-Za-z][A-Za-z0-9+.-]*:)?//[^/?#]*@', '\1//')"

# Every check of admission.admit that could refuse or re-delay, as "it cannot" (§5.10, §5.13, §5.7–5.9),
# in two parts: the checks other than limits, and "the job has no limit that applies to the run".
STARTABLE_SQL = f"""(
    (r.attempt > 0 OR r.expires_at IS NULL OR r.expires_at > CAST(:now AS timestamptz))
    AND (j.version_policy = 'latest' OR (j.version_policy = 'minor' AND j.backwards_compatible)
         OR (j.version_policy IN ('pin', 'minor') AND r.job_version_id = j.version_id))
    AND COALESCE(j.execution_window_cron, '') = ''
    AND COALESCE(j.endpoint_url, '') <> '' AND j.timeout_secs BETWEEN 1 AND 86400
    AND j.max_attempts BETWEEN 1 AND 100 AND COALESCE(j.retry_strategy, '') IN ({_STRATEGIES})
)"""
_UNLIMITED = """(
    COALESCE(j.max_concurrency, 0) = 0
    AND (COALESCE(j.max_concurrency_per_key, 0) = 0 OR COALESCE(r.concurrency_key, '') = '')
    AND (COALESCE(j.rate_limit_max, 0) = 0 OR COALESCE(j.rate_limit_window_secs, 0) = 0)
    AND (j.rate_limit_keys IS NULL OR j.rate_limit_keys IN ('[]'::jsonb, 'null'::jsonb))
)"""
_FAST = f"({STARTABLE_SQL} AND {_UNLIMITED})"
# Startable once its limits admit it (worker.limited_start): what that needs, only for such a run.
_LIMITED = f"({STARTABLE_SQL} AND NOT {_UNLIMITED})"
# What the limit check needs (``RunLimits``), as one JSON array.
LIMITS_SQL = ("json_build_array(r.attempt, r.priority, r.metadata, r.tags, j.max_concurrency, "
              "j.max_concurrency_per_key, j.rate_limit_max, j.rate_limit_window_secs, j.rate_limit_keys)")

# "status is queued" for a row looked up by id, written so that it does not match ix_runs_ready's predicate:
# with the plain form the planner may take that partial index (it holds id, as its last column) and filter
# the whole ready set for the id, instead of one primary-key lookup (seen with stale statistics).
_BY_ID_QUEUED = "({t}.status = 'queued') IS TRUE"

CLAIM_COLUMNS = ("id", "job_id", "payload", "concurrency_key", "debug_mode", "queued_at", "max_attempts_override",
                 "timeout_secs_override", "endpoint_url", "fallback_endpoint_url", "timeout_secs", "max_attempts",
                 "retry_strategy", "retry_delays_secs", "version", "version_id", "webhook_secret")

_PICKED = f"""SELECT r.id, r.job_id, r.payload, r.concurrency_key, r.debug_mode, r.queued_at, r.max_attempts_override,
           r.timeout_secs_override, j.endpoint_url, j.fallback_endpoint_url, j.timeout_secs, j.max_attempts,
           j.retry_strategy, j.retry_delays_secs, j.version, j.version_id, j.webhook_secret, {_FAST} AS fast,
           CASE WHEN {_LIMITED} THEN {LIMITS_SQL} END AS limits
    FROM runs r JOIN jobs j ON j.id = r.job_id
    WHERE {{queued}} AND r.held_at IS NULL AND j.enabled IS true"""

_SQL = f"""
WITH hinted AS (
    {_PICKED.format(queued=_BY_ID_QUEUED.format(t="r"))}
      AND r.id = :hint
      -- OFFSET 0 keeps this a correlated subquery: an index range "priority > this run's", empty in the
      -- common case. As an anti-join the planner may scan the whole ready set for it (fresh statistics).
      AND NOT EXISTS (SELECT 1 FROM runs b JOIN jobs bj ON bj.id = b.job_id
                      WHERE b.status = 'queued' AND b.priority > r.priority AND b.held_at IS NULL
                        AND bj.enabled IS true OFFSET 0)
    FOR UPDATE OF r SKIP LOCKED
), best AS (
    {_PICKED.format(queued="r.status = 'queued'")}
    ORDER BY r.priority DESC, r.queued_at, r.id
    LIMIT 1
    FOR UPDATE OF r SKIP LOCKED
), picked AS (
    SELECT * FROM hinted UNION ALL SELECT * FROM best LIMIT 1
), moved AS (
    UPDATE runs SET status = 'executing', attempt = runs.attempt + 1, started_at = CAST(:now AS timestamptz),
                    heartbeat_at = CAST(:now AS timestamptz), next_retry_at = NULL
    FROM picked WHERE runs.id = picked.id AND {_BY_ID_QUEUED.format(t="runs")}
      AND (picked.fast OR (picked.limits IS NOT NULL AND CAST(:start_limited AS boolean)))
    RETURNING runs.id, runs.attempt
), logged AS (
    INSERT INTO run_events (id, run_id, type, message, data, created_at)
    SELECT :e0_id, moved.id, 'state_change', NULL, CAST('{{"from": "queued", "to": "executing"}}' AS jsonb),
           CAST(:now AS timestamptz) FROM moved
    UNION ALL
    SELECT :e1_id, moved.id, 'attempt_started', NULL,
           jsonb_build_object('attempt', moved.attempt, 'job_version', picked.version,
                              'endpoint_url', {STRIP_USERINFO_SQL}),
           CAST(:now AS timestamptz) FROM moved JOIN picked ON picked.id = moved.id
)
SELECT {", ".join(f"picked.{c}" for c in CLAIM_COLUMNS)}, moved.attempt, picked.limits
FROM picked LEFT JOIN moved ON moved.id = picked.id
"""

CLAIM_AND_START = HotStatement.build("sluice_claim_and_start_v6", _SQL)


@dataclass(frozen=True)
class RunLimits:
    """For a picked run that only its job's limits could refuse: what the limit check needs."""

    attempt: int  # the run's attempt count before this start
    priority: int
    metadata: dict[str, Any]
    tags: dict[str, Any]
    max_concurrency: int | None
    max_concurrency_per_key: int | None
    rate_limit_max: int | None
    rate_limit_window_secs: int | None
    rate_limit_keys: list[dict[str, Any]]

    @classmethod
    def of(cls, values: list[Any]) -> RunLimits:
        attempt, priority, metadata, tags, cap, key_cap, rate_max, rate_window, rate_keys = values
        return cls(attempt, priority, metadata or {}, tags or {}, cap, key_cap, rate_max, rate_window,
                   rate_keys or [])


@dataclass(slots=True)
class FastClaim:
    """The best ready run as the statement saw it; ``attempt`` is ``None`` when it was not started (the
    checked path must handle it). ``worker.limited_start`` fills in the start it makes itself."""

    run_id: str
    job_id: str
    payload: str
    concurrency_key: str | None
    debug_mode: bool
    queued_at: datetime | None
    max_attempts_override: int | None
    timeout_secs_override: int | None
    live: dict[str, Any]  # the live job's six execution settings (shared.runs.execution_settings)
    version: int
    version_id: str
    webhook_secret: str | None
    attempt: int | None
    # Set when only its job's limits could refuse the run (worker.limited_start): then it was started only
    # inside a transaction still open (``in_transaction``), and not at all otherwise.
    limits: RunLimits | None = None
    # Started by worker.limited_start with room to spare (``LimitDecision.roomy``): its leases may be
    # released late, in a batch, like those of a job without limits.
    release_late: bool = False
    # Validated by worker.limited_start / worker.handoff_start when they started the run.
    settings: ExecutionSettings | None = None


def claim_and_start(direct: DirectStatements, run_id: str, now: datetime, *,
                    in_transaction: bool = False) -> FastClaim | None:
    """Claim a best ready run — ``run_id`` (the message's) if it is one — and start it if nothing could refuse
    it; ``None`` if nothing is claimable.

    ``in_transaction``: run the statement as the first of a transaction left open (``DirectStatements.
    begin_first``) and start a run that only its job's limits could refuse as well: uncommitted, so the
    caller can still undo it (``worker.limited_start``); the caller ends the transaction."""
    first, second = sorted((uuid7(), uuid7()))  # ids sort in write order (created_at, id)
    params = {"hint": run_id, "now": now, "e0_id": first, "e1_id": second, "start_limited": in_transaction}
    row = (direct.begin_first if in_transaction else direct.first)(CLAIM_AND_START, params)
    return None if row is None else claim_of_row(row)


def claim_of_row(row: tuple[Any, ...]) -> FastClaim:
    """The claim from a row of ``CLAIM_COLUMNS``, the started attempt (or NULL) and ``LIMITS_SQL`` (or NULL)."""
    (run_id, job_id, payload, key, debug, queued_at, max_override, timeout_override, endpoint, fallback,
     timeout, max_attempts, strategy, delays, version, version_id, secret, attempt, limits) = row
    live = {"endpoint_url": endpoint, "fallback_endpoint_url": fallback, "timeout_secs": timeout,
            "max_attempts": max_attempts, "retry_strategy": strategy, "retry_delays_secs": delays}
    return FastClaim(run_id=run_id, job_id=job_id, payload=payload, concurrency_key=key, debug_mode=bool(debug),
                     queued_at=queued_at, max_attempts_override=max_override,
                     timeout_secs_override=timeout_override, live=live, version=version, version_id=version_id,
                     webhook_secret=secret, attempt=attempt, limits=None if limits is None else RunLimits.of(limits))
