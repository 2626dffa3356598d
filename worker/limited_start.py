"""Starting runs on the worker's direct connection: one statement, or a short transaction for limited jobs.

``worker.fast_start`` claims and starts a run in one autocommit statement when nothing can refuse it. A run
whose job has a concurrency or rate limit needs the Redis limit script (§5.8, §5.9) before its start
counts, *while the run stays locked*: a lease is keyed by run id, so nobody else may claim the run between
the acquire and the start, and a lost race must never release a lease another worker took. So for such a
run the same claim statement runs as the first of a transaction (``BEGIN`` travels with it) and starts it
there, uncommitted; then the limit script decides whether that start stands::

    BEGIN; EXECUTE claim_and_start(…)  -- picks, locks and starts the run, events included (not yet visible)
    <Redis: acquire the leases and rate marks, or refuse and register the run as a slot waiter>
    COMMIT                             -- admitted: the start is what everyone sees from now on
    ROLLBACK; <move to delayed>        -- refused: as if never started; re-delayed, no attempt used

So a limited start costs one round trip more than an unlimited one: a bare ``COMMIT``.

Which form a thread uses is a guess from its previous claim: a thread whose last claim found a limited run
opens the transaction up front; one whose last claim started an unlimited run does not (its statement never
starts a limited run, which it could not undo). A wrong guess costs one round trip (a ``COMMIT`` after an
unlimited start, or a second claim after a limited one), never a wrong start. Everything the checked path
(``worker.claim`` + ``worker.admission``) would decide differently for such a run — expiry, version policy,
a window, unusable settings — is excluded by the claim statement or by the same validation here, and those
runs still take the checked path.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from datetime import datetime
from typing import Any

from shared.clock import format_ts
from shared.config import Settings
from shared.limits.limiter import LimitDecision, LimitRequest, Limits, rate_rules_for
from shared.metrics import observe_redelay
from shared.runs.execution_settings import ExecutionSettings, SettingsUnresolvable, live_settings
from shared.runs.moves import move_run_unhooked
from shared.runs.transitions import RunStatus
from worker.admission import NotStarted, retry_at
from worker.direct import DirectStatements
from worker.fast_start import FastClaim, RunLimits, claim_and_start

log = logging.getLogger("sluice.worker")

# What ``limit_request`` raises for a job row the API did not write; the checked path then fails the run.
UNUSABLE = (SettingsUnresolvable, ValueError, TypeError, KeyError)


def limit_request(claim: FastClaim, limits: RunLimits, lease_margin_secs: int, *,
                  hand_over: tuple[str, str | None] | None = None) -> tuple[ExecutionSettings, LimitRequest]:
    """The claimed run's execution settings (the live job's, validated) and what its start is checked
    against (``shared.limits.limiter``); a concurrency refusal registers it as a slot waiter."""
    settings = live_settings(claim.live, claim.version, claim.version_id)
    timeout_secs = claim.timeout_secs_override or settings.timeout_secs
    payload: Any = json.loads(claim.payload) if limits.rate_limit_keys else None
    return settings, LimitRequest(
        run_id=claim.run_id, job_id=claim.job_id, max_concurrency=limits.max_concurrency,
        concurrency_key=claim.concurrency_key, max_concurrency_per_key=limits.max_concurrency_per_key,
        lease_ms=(timeout_secs + lease_margin_secs) * 1000,
        rate_rules=rate_rules_for(claim.job_id, limits.rate_limit_max, limits.rate_limit_window_secs,
                                  limits.rate_limit_keys, limits.metadata, limits.tags, payload),
        waiter_priority=limits.priority, hand_over=hand_over)


def acquire_or_undo(direct: DirectStatements, limits: Limits, request: LimitRequest) -> LimitDecision:
    """The limit script for a start left open in ``direct``'s transaction: ``COMMIT`` it when admitted,
    ``ROLLBACK`` it when refused or on any error (raised). A failed ``COMMIT`` leaves the lease to expire, as
    on the checked path: over-counting, never under."""
    try:
        decision = limits.acquire(request)
    except BaseException:
        direct.rollback()
        raise
    if decision.admitted:
        direct.commit()
    else:
        direct.rollback()
    return decision


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
        in_transaction = getattr(self._local, "expect_limited", False)
        claim = claim_and_start(self._direct, run_id, now, in_transaction=in_transaction)
        if not in_transaction:
            if claim is None or claim.limits is None:
                return claim
            self._local.expect_limited = True  # not started, lock gone: claim again inside a transaction
            claim = claim_and_start(self._direct, run_id, now, in_transaction=True)
        if claim is not None and claim.limits is not None and claim.attempt is not None:
            return self._admit(claim, claim.limits, now)
        if claim is not None and claim.attempt is not None:
            self._direct.commit()  # an unlimited run, started by the claim itself
            self._local.expect_limited = False
        else:
            self._direct.rollback()  # nothing claimable, or a run for the checked path
            if claim is not None:
                claim.limits = None
        return claim

    def _admit(self, claim: FastClaim, limits: RunLimits, now: datetime) -> FastClaim | NotStarted:
        """With ``claim``'s run started in the open transaction: the limit script, then commit or undo."""
        try:
            settings, request = limit_request(claim, limits, self._settings.lease_margin_secs)
        except UNUSABLE:
            self._direct.rollback()  # the checked path fails the run with the reason (system_failed)
            claim.attempt, claim.limits = None, None
            return claim
        decision = acquire_or_undo(self._direct, self._limits, request)
        if not decision.admitted:
            return self._redelay(claim, limits, decision.reason or "concurrency",
                                 retry_at(decision, now, self._settings, self._rng), decision.limit, now)
        claim.release_late, claim.settings = decision.roomy, settings
        return claim

    def _redelay(self, claim: FastClaim, limits: RunLimits, reason: str, until: datetime,
                 limit: dict[str, Any], now: datetime) -> NotStarted:
        """``queued → delayed`` until ``until`` with event ``redelayed`` (no attempt used), in one statement.

        The run is unlocked again (the start was rolled back): the move applies only if it is still queued
        at the attempt count it was refused at; if another worker claimed it meanwhile, that one decides."""
        events = [("redelayed", {"reason": reason, "until": format_ts(until), "limit": limit})]
        moved = move_run_unhooked(self._direct.first, claim.run_id, from_status=RunStatus.QUEUED,
                                  to=RunStatus.DELAYED, now=now, values={"scheduled_at": until}, events=events,
                                  where_equal={"attempt": limits.attempt})
        if moved is None:
            return NotStarted("lost", reason, claim.run_id)
        observe_redelay(reason)
        log.info("run not started", extra={"run_id": claim.run_id, "job_id": claim.job_id,
                                           "action": "redelayed", "reason": reason})
        return NotStarted("redelayed", reason, claim.run_id)
