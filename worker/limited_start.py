"""Starting runs on the worker's direct connection: one statement, or a short transaction for limited jobs.

``worker.fast_start`` claims and starts a run in one autocommit statement when nothing can refuse it. A run
whose job has a concurrency or rate limit needs the Redis limit script (§5.8, §5.9) between the claim and
the start, *while the run stays locked*: a lease is keyed by run id, so the run must not be claimable by
anyone else between the acquire and the start (or the re-delay), and a lost race must never release a
lease another worker took. So for such a run the same claim statement opens a transaction (``BEGIN``
travels with it), the limit script runs, and one more round trip starts the run and commits (or re-delays
it with its ``redelayed`` event and commits)::

    BEGIN; EXECUTE claim_and_start(…)   -- picks and locks; starts it only if it has no limits
    <Redis: acquire leases and rate marks, or refuse and register the run as a slot waiter>
    EXECUTE start_locked(…); COMMIT     -- or: EXECUTE <move to delayed>; then COMMIT

Which form a thread uses is a guess from its previous claim: a thread whose last claim found a limited run
opens the transaction up front; one whose last claim started an unlimited run does not. A wrong guess costs
one round trip (a ``COMMIT`` after an unlimited start, or a second claim after a limited one), never a
wrong start. Everything the checked path (``worker.claim`` + ``worker.admission``) would decide differently
for such a run — expiry, version policy, a window, unusable settings — is excluded by the claim statement
or by the same validation here, and those runs still take the checked path.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.addresses import strip_userinfo
from shared.clock import format_ts
from shared.config import Settings
from shared.execution_settings import SettingsUnresolvable, live_settings
from shared.ids import uuid7
from shared.limits import LimitRequest, Limits, rate_rules_for
from shared.metrics import observe_redelay
from shared.prepared import HotStatement
from shared.run_moves import move_run_unhooked
from shared.runstate import RunStatus
from worker.admission import NotStarted, retry_at
from worker.direct import DirectStatements
from worker.fast_start import FastClaim, RunLimits, claim_and_start

log = logging.getLogger("sluice.worker")

# ``queued → executing`` of the run this transaction holds locked, with its two events (as the claim
# statement writes them). The final SELECT divides by the number of rows moved: were the row somehow not
# queued any more, the statement fails, the ``COMMIT`` sent with it never runs, and nothing is started.
_START_LOCKED = HotStatement.build("sluice_start_locked_v1", """
WITH moved AS (
    UPDATE runs SET status = 'executing', attempt = runs.attempt + 1, started_at = CAST(:now AS timestamptz),
                    heartbeat_at = CAST(:now AS timestamptz), next_retry_at = NULL
    WHERE runs.id = :run_id AND (runs.status = 'queued') IS TRUE AND runs.attempt = :attempt
    RETURNING runs.id
), logged AS (
    INSERT INTO run_events (id, run_id, type, message, data, created_at)
    SELECT :e0_id, moved.id, 'state_change', NULL, CAST('{"from": "queued", "to": "executing"}' AS jsonb),
           CAST(:now AS timestamptz) FROM moved
    UNION ALL
    SELECT :e1_id, moved.id, 'attempt_started', NULL, CAST(:started AS jsonb), CAST(:now AS timestamptz)
    FROM moved
)
SELECT 1 / (SELECT count(*)::int FROM moved)
""")


class DirectStarter:
    """Claims and starts runs on the direct connection; thread-safe (the guess is per thread)."""

    def __init__(self, direct: DirectStatements, *, limits: Limits, settings: Settings,
                 rng: random.Random) -> None:
        self._direct = direct
        self._limits = limits
        self._settings = settings
        self._rng = rng
        self._local = threading.local()

    def start(self, run_id: str, now: datetime) -> FastClaim | NotStarted | None:
        """Claim a best ready run (``run_id`` if it is one) and start it if its checks allow.

        Returns ``None`` when nothing is claimable, ``NotStarted`` when its limits re-delayed it, or the
        claim: started (``attempt`` set; ``limits`` set when it went through the limit script), or, with
        ``attempt`` ``None``, left for the checked path (nothing written, no lock kept).
        """
        expect_limited = getattr(self._local, "expect_limited", False)
        claim = claim_and_start(self._direct, run_id, now, in_transaction=expect_limited)
        if claim is not None and claim.limits is not None and not expect_limited:
            self._local.expect_limited = True  # its lock is gone: claim again, keeping the lock this time
            claim = claim_and_start(self._direct, run_id, now, in_transaction=True)
            expect_limited = True
        if not expect_limited:
            return claim
        if claim is None or claim.limits is None:
            if claim is not None and claim.attempt is not None:
                self._direct.commit()  # an unlimited run, started by the claim itself
                self._local.expect_limited = False
            else:
                self._direct.rollback()
            return claim
        return self._admit(claim, claim.limits, now)

    def _admit(self, claim: FastClaim, limits: RunLimits, now: datetime) -> FastClaim | NotStarted:
        """With ``claim``'s run locked in the open transaction: the limit script, then start or re-delay."""
        try:
            settings = live_settings(claim.live, claim.version, claim.version_id)
            timeout_secs = claim.timeout_secs_override or settings.timeout_secs
            payload: Any = json.loads(claim.payload) if limits.rate_limit_keys else None
            request = LimitRequest(
                run_id=claim.run_id, job_id=claim.job_id, max_concurrency=limits.max_concurrency,
                concurrency_key=claim.concurrency_key, max_concurrency_per_key=limits.max_concurrency_per_key,
                lease_ms=(timeout_secs + self._settings.lease_margin_secs) * 1000,
                rate_rules=rate_rules_for(claim.job_id, limits.rate_limit_max, limits.rate_limit_window_secs,
                                          limits.rate_limit_keys, limits.metadata, limits.tags, payload),
                waiter_priority=limits.priority)
        except (SettingsUnresolvable, ValueError, TypeError, KeyError):
            self._direct.rollback()  # the checked path fails the run with the reason (system_failed)
            return replace(claim, limits=None)
        try:
            decision = self._limits.acquire(request)
        except BaseException:
            self._direct.rollback()
            raise
        if not decision.admitted:
            return self._redelay(claim, decision.reason or "concurrency",
                                 retry_at(decision, now, self._settings, self._rng), decision.limit, now)
        first, second = sorted((uuid7(), uuid7()))  # ids sort in write order (created_at, id)
        started = json.dumps({"attempt": limits.attempt + 1, "job_version": claim.version,
                              "endpoint_url": strip_userinfo(settings.endpoint_url)})
        # A failure here leaves the lease to expire, as on the checked path: over-counting, never under.
        self._direct.commit_after(_START_LOCKED, {"run_id": claim.run_id, "now": now, "attempt": limits.attempt,
                                                  "e0_id": first, "e1_id": second, "started": started})
        return replace(claim, attempt=limits.attempt + 1, release_late=decision.roomy)

    def _redelay(self, claim: FastClaim, reason: str, until: datetime, limit: dict[str, Any],
                 now: datetime) -> NotStarted:
        """``queued → delayed`` until ``until`` with event ``redelayed`` (no attempt used), then commit."""
        events = [("redelayed", {"reason": reason, "until": format_ts(until), "limit": limit})]
        try:
            move_run_unhooked(self._direct.in_transaction, claim.run_id, from_status=RunStatus.QUEUED,
                              to=RunStatus.DELAYED, now=now, values={"scheduled_at": until}, events=events)
            self._direct.commit()
        except BaseException:
            self._direct.rollback()
            raise
        observe_redelay(reason)
        log.info("run not started", extra={"run_id": claim.run_id, "job_id": claim.job_id,
                                           "action": "redelayed", "reason": reason})
        return NotStarted("redelayed", reason, claim.run_id)
