"""Starting an attempt (CONTRACT §5.1 steps 1–8): the one way a run goes ``queued → executing``.

``Starter.start`` sends the start statement (``worker.start_statement``) for a message's run or a slot
waiter. In the common case that one statement, on the thread's autocommit connection, picks the run,
checks every admission rule and starts it. Otherwise the rules in Python (``shared.runs.admission``) say
which one refused, and:

- ``expire`` → ``expired`` (not started before ``expires_at``); ``fail`` → ``system_failed`` (unusable
  settings: only for rows the API did not write);
- ``snapshot`` → the run's pinned version is read and validated, and the statement sent again for it;
- ``window`` → the execution window is evaluated: closed → ``delayed`` until the next open minute
  (``redelayed``, no attempt used); open → the statement is sent again for it;
- a job with a limit that applies → the statement is sent inside a transaction and starts the run
  uncommitted and locked; the limit script (``shared.limits``) then decides: ``COMMIT``, or ``ROLLBACK``
  followed by a re-delay until the limit has room. The row stays locked until Redis has answered, so a
  lease (keyed by run id) is never taken or released under another worker.

Which transaction form a thread uses is a guess from its previous start: a thread whose last pick was
limited opens the transaction up front. A wrong guess costs one round trip, never a wrong start.
A run of a job without limits gets its lease recorded by the attempt monitor once it has run for a poll (it
cannot be refused; the lease only lets a limit added later count it).
"""

from __future__ import annotations

import json
import logging
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from shared.clock import format_ts
from shared.config import Settings
from shared.limits.limiter import LimitDecision, LimitRequest, Limits, rate_rules_for
from shared.metrics import observe_redelay
from shared.runs.admission import first_refusal
from shared.runs.execution_settings import (
    ExecutionSettings,
    SettingsUnresolvable,
    checked_settings,
    settings_of,
    snapshot_settings,
)
from shared.runs.status import RunStatus
from shared.runs.transitions import event_ids
from shared.schedules.cron import CronError, CronSpec, is_minute_open, next_open_minute, parse_cron
from worker.attempt import Attempt, Picked, attempt_timeout
from worker.connection import ThreadConnection
from worker.recording import Recorder
from worker.start_statement import start_statements

log = logging.getLogger("sluice.worker")

S = RunStatus
MAX_SENDS = 4  # statements per start: a pick, then at most a snapshot, a window and a transaction
WAKE_MESSAGE = "slot released"
HandOver = tuple[str, str | None]  # an ended attempt's run id and concurrency key, whose leases pass on


@dataclass(frozen=True)
class NotStarted:
    """What happened instead: ``expired``, ``system_failed``, ``redelayed``, ``skipped`` (a slot waiter
    that cannot start now: left as it is) or ``lost`` (another writer moved it first)."""

    action: str
    run_id: str
    detail: str | None = None


@lru_cache(maxsize=1024)
def _window(expression: str) -> CronSpec:
    return parse_cron(expression)


def window_closed_until(expression: str | None, timezone: str, now: datetime) -> datetime | None:
    """``None`` when the current minute is open (or there is no window), else the next open minute."""
    if not expression:
        return None
    spec = _window(expression)
    return None if is_minute_open(spec, timezone, now) else next_open_minute(spec, timezone, now)


class Starter:
    """Starts attempts on the calling thread's connection; thread-safe."""

    def __init__(self, connection: ThreadConnection, recorder: Recorder, *, limits: Limits, settings: Settings,
                 rng: random.Random) -> None:
        self._connection = connection
        self._recorder = recorder
        self._limits = limits
        self._settings = settings
        self._rng = rng
        self._local = threading.local()
        self._statements = start_statements(project_cap=settings.project_max_executing is not None)
        # Where the fair pick's window of projects begins: after the project of the last run this process
        # started, so that busy projects' messages visit the other projects round-robin (worker.start_statement).
        self._fair_origin: str | None = None

    def start(self, hint: str, now: datetime, *, hand_over: HandOver | None = None) -> Attempt | NotStarted | None:
        """Start a run: the message's run ``hint`` (or the best ready run instead), or with ``hand_over``
        the slot waiter ``hint`` with the ended attempt's leases. ``None`` when nothing could be picked."""
        wake = hand_over is not None
        params: dict[str, Any] = {"hint": hint, "best": not wake, "wake": wake, "window_open_id": None,
                                  "settings_checked_id": None, "snapshot_version": None, "snapshot_endpoint": None,
                                  "wake_message": WAKE_MESSAGE,
                                  "project_max_executing": self._settings.project_max_executing,
                                  "origin": self._fair_origin}
        snapshot: ExecutionSettings | None = None
        in_transaction = wake or getattr(self._local, "expect_limited", False)
        for _ in range(MAX_SENDS):
            ids = event_ids(3)
            params.update(now=now, in_transaction=in_transaction, e0_id=ids[0], e1_id=ids[1], e2_id=ids[2])
            row = self._send(params, in_transaction)
            picked = None if row is None else Picked.of(row)
            if picked is not None and picked.attempt is not None:
                self._fair_origin = picked.project_id
                settings = snapshot if params["settings_checked_id"] == picked.run_id and snapshot else (
                    checked_settings(picked.live, picked.version, picked.version_id))
                if picked.limited:
                    return self._admit(picked, settings, now, hand_over)
                if in_transaction:
                    self._connection.commit()
                    self._local.expect_limited = False
                return self._unlimited(picked, settings, hand_over)
            if in_transaction:
                self._connection.rollback()
            if picked is None:
                return None
            if wake:
                return NotStarted("skipped", picked.run_id)
            params["hint"] = picked.run_id  # whatever happens next concerns this run
            if picked.candidate is None:  # every rule holds: only its limits kept it from starting
                in_transaction = self._local.expect_limited = True
                continue
            refusal = first_refusal(picked.candidate, params)
            if refusal is None:  # SQL and Python disagree: tests/integration/test_admission_rules.py guards this
                log.error("start refused by no rule", extra={"run_id": picked.run_id, "job_id": picked.job_id})
                return NotStarted("lost", picked.run_id)
            if refusal.refusal == "expire":
                return self._expire(picked, now)
            if refusal.refusal == "snapshot":
                try:
                    snapshot = self._snapshot(picked)
                except SettingsUnresolvable as exc:
                    return self._fail(picked, now, str(exc))
                params.update(settings_checked_id=picked.run_id, snapshot_version=snapshot.version,
                              snapshot_endpoint=snapshot.endpoint_url)
            elif refusal.refusal == "window":
                try:
                    until = window_closed_until(picked.candidate["execution_window_cron"],
                                                picked.candidate["timezone"], now)
                except (CronError, ValueError) as exc:
                    return self._fail(picked, now, str(exc))
                if until is not None:
                    limit = {"kind": "execution_window", "execution_window_cron":
                             picked.candidate["execution_window_cron"], "timezone": picked.candidate["timezone"]}
                    return self._redelay(picked, picked.candidate["attempt"], "window", until, limit, now)
                params["window_open_id"] = picked.run_id
            elif refusal.refusal == "project_cap":
                limit = {"kind": "project_max_executing", "max": self._settings.project_max_executing}
                return self._redelay(picked, picked.candidate["attempt"], "concurrency",
                                     now + self._slot_retry(), limit, now)
            else:
                return self._fail(picked, now, _unusable(picked))
        return NotStarted("lost", params["hint"])

    def _send(self, params: dict[str, Any], in_transaction: bool) -> tuple[Any, ...] | None:
        """The hinted form first (the message's own run, when it may go now: nearly always); when it picks
        nothing, the whole statement, in the same transaction (the fair pick, a rival project's turn)."""
        row = (self._connection.begin_first if in_transaction else self._connection.first)(self._statements.hinted,
                                                                                            params)
        if row is not None:
            return row
        return (self._connection.then_first if in_transaction else self._connection.first)(self._statements.full,
                                                                                           params)

    def _snapshot(self, picked: Picked) -> ExecutionSettings:
        assert picked.candidate is not None
        with self._recorder.session() as session:
            return snapshot_settings(session, picked.job_id, picked.candidate["job_version_id"])

    def _unlimited(self, picked: Picked, settings: ExecutionSettings, hand_over: HandOver | None) -> Attempt:
        """A run that nothing could refuse. Its lease only keeps ``slots_in_use`` true (a limit added later
        counts this attempt), so it is not taken here: the attempt monitor records it at its next poll if the
        attempt still runs then (``lease_pending``), in one pipeline with the others, and a call that ends
        sooner costs Redis nothing. A woken slot waiter whose job has lost its limits takes it now, which
        drops the ended attempt's leases in the same step. A Redis failure here is logged; the attempt goes on."""
        cap = self._settings.project_max_timeout_secs
        if hand_over is None:
            return Attempt.of(picked, settings, hands_off=False, timeout_cap=cap, lease_pending=True)
        attempt = Attempt.of(picked, settings, hands_off=False, timeout_cap=cap)
        try:
            self._limits.acquire(LimitRequest(run_id=picked.run_id, job_id=picked.job_id, max_concurrency=None,
                                              concurrency_key=picked.concurrency_key, max_concurrency_per_key=None,
                                              lease_ms=self._lease_ms(attempt.timeout_secs), hand_over=hand_over))
        except Exception as exc:  # redis errors, connection errors: a lease is a hint, never a gate here
            log.warning("lease not recorded (the job has no limits)", extra={
                "run_id": picked.run_id, "job_id": picked.job_id, "error": type(exc).__name__})
        return attempt

    def _admit(self, picked: Picked, settings: ExecutionSettings, now: datetime,
               hand_over: HandOver | None) -> Attempt | NotStarted:
        """With ``picked`` started in the open transaction: the limit script, then commit or undo."""
        assert picked.limits is not None
        limits = picked.limits
        timeout_secs = attempt_timeout(picked, settings, self._settings.project_max_timeout_secs)
        payload: Any = json.loads(picked.payload) if limits.rate_limit_keys else None
        request = LimitRequest(
            run_id=picked.run_id, job_id=picked.job_id, max_concurrency=limits.max_concurrency,
            concurrency_key=picked.concurrency_key, max_concurrency_per_key=limits.max_concurrency_per_key,
            lease_ms=self._lease_ms(timeout_secs), waiter_priority=limits.priority, hand_over=hand_over,
            rate_rules=rate_rules_for(picked.job_id, limits.rate_limit_max, limits.rate_limit_window_secs,
                                      limits.rate_limit_keys, limits.metadata, limits.tags, payload))
        try:
            decision = self._limits.acquire(request)
        except BaseException:
            self._connection.rollback()
            raise
        if decision.admitted:
            self._connection.commit()  # a failed COMMIT leaves the lease to expire: over-counting, never under
            return Attempt.of(picked, settings, hands_off=not decision.roomy,
                              timeout_cap=self._settings.project_max_timeout_secs)
        self._connection.rollback()
        return self._redelay(picked, limits.attempt, decision.reason or "concurrency",
                             retry_at(decision, now, self._settings, self._rng), decision.limit, now)

    def _slot_retry(self) -> timedelta:
        return timedelta(seconds=self._settings.slot_retry_secs + self._rng.random())

    def _lease_ms(self, timeout_secs: int) -> int:
        return (timeout_secs + self._settings.lease_margin_secs) * 1000

    def _redelay(self, picked: Picked, attempt: int, reason: str, until: datetime, limit: dict[str, Any],
                 now: datetime) -> NotStarted:
        """``queued → delayed`` until ``until`` with event ``redelayed`` (no attempt used). The run is not
        locked any more: the move applies only if it is still queued at the attempt count it was refused at."""
        events = [("redelayed", {"reason": reason, "until": format_ts(until), "limit": limit})]
        if not self._recorder.move(picked.run_id, S.DELAYED, now=now, from_=S.QUEUED, values={"scheduled_at": until},
                                   where={"attempt": attempt}, events=events):
            return NotStarted("lost", picked.run_id, reason)
        observe_redelay(reason)
        log.info("run not started", extra={"run_id": picked.run_id, "job_id": picked.job_id,
                                           "action": "redelayed", "reason": reason})
        return NotStarted("redelayed", picked.run_id, reason)

    def _expire(self, picked: Picked, now: datetime) -> NotStarted:
        moved = self._recorder.move(picked.run_id, S.EXPIRED, now=now, from_=S.QUEUED,
                                    guards=("unstarted_past_expiry",))
        return NotStarted("expired" if moved else "lost", picked.run_id)

    def _fail(self, picked: Picked, now: datetime, why: str) -> NotStarted:
        reason = f"internal: cannot resolve execution settings: {why}"
        moved = self._recorder.move(picked.run_id, S.SYSTEM_FAILED, now=now, from_=S.QUEUED,
                                    values={"error": reason, "error_class": "internal"})
        log.error("run failed: settings unresolvable", extra={"run_id": picked.run_id, "job_id": picked.job_id,
                                                              "reason": reason})
        return NotStarted("system_failed" if moved else "lost", picked.run_id, reason)


def _unusable(picked: Picked) -> str:
    """Why the live job's settings (or its version policy) are unusable, in words."""
    assert picked.candidate is not None
    try:
        settings_of(picked.live, picked.version, picked.version_id)
    except SettingsUnresolvable as exc:
        return str(exc)
    return f"unknown version_policy {picked.candidate['version_policy']!r}"


def retry_at(decision: LimitDecision, now: datetime, settings: Settings, rng: random.Random) -> datetime:
    """Rate limits: the decision's earliest instant with room. Concurrency: now + slot retry + ≤ 1 s jitter."""
    if decision.reason == "rate_limit" and decision.retry_at_ms is not None:
        return max(now, datetime.fromtimestamp(decision.retry_at_ms / 1000, UTC))
    return now + timedelta(seconds=settings.slot_retry_secs + rng.random())
