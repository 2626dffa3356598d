"""The endpoint call of one attempt: headers, signature, primary then fallback (CONTRACT §5.2, §5.6).

One deadline covers both calls. The fallback runs only after a **retryable** primary failure other than a
timeout (a timeout leaves no time), in the same attempt, with the same headers and ``webhook-id`` but a
fresh ``webhook-timestamp`` and signature. The fallback's outcome is the attempt's; a failed fallback's
error reads ``primary: <e1>; fallback: <e2>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.runs.retries import Outcome, combine_fallback
from shared.webhooks.signing import signature_headers
from worker.call_result import CallResult
from worker.debug_events import debug_event
from worker.http import PostFunction, Resolver


@dataclass(frozen=True)
class CallPlan:
    run_id: str
    job_id: str
    attempt: int
    body: bytes
    endpoint_url: str
    fallback_endpoint_url: str | None
    webhook_secrets: tuple[str, ...] = field(repr=False)  # current first; none: unsigned
    traceparent: str  # this attempt's: the run's trace, a new parent id
    deadline: float  # time.monotonic() value: attempt start + effective timeout
    timeout_secs: int
    user_agent: str
    debug: bool


@dataclass
class AttemptCall:
    """The attempt's outcome and the call that produced it (the fallback's when it ran)."""

    outcome: Outcome
    result: CallResult
    used_fallback: bool
    responded_at: float  # monotonic: response complete (or failure noticed)
    debug_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def base_headers(plan: CallPlan) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": plan.user_agent,
        "X-Sluice-Run-Id": plan.run_id,
        "X-Sluice-Job-Id": plan.job_id,
        "X-Sluice-Attempt": str(plan.attempt),
        "Idempotency-Key": plan.run_id,
        "traceparent": plan.traceparent,
    }


def perform_call(plan: CallPlan, *, post: PostFunction, resolve: Resolver, clock: Callable[[], datetime],
                 should_abort: Callable[[], bool]) -> AttemptCall:
    """Call the primary endpoint, then the fallback if §5.6 applies. Raises ``CallAborted`` on cancel."""
    headers = base_headers(plan)
    debug: list[tuple[str, dict[str, Any]]] = []

    def call(url: str, which: str) -> CallResult:
        signed = {**headers, **signature_headers(plan.webhook_secrets, f"{plan.run_id}:{plan.attempt}",
                                                 int(clock().timestamp()), plan.body)}
        result = post(url, plan.body, signed, deadline=plan.deadline, resolve=resolve, now=clock,
                      should_abort=should_abort, timeout_secs=plan.timeout_secs)
        if plan.debug:
            debug.append(("debug", debug_event(which, plan.attempt, url, signed, result)))
        return result

    primary = call(plan.endpoint_url, "primary")
    outcome = primary.outcome
    if (outcome.is_retryable and outcome.error_class != "timeout" and plan.fallback_endpoint_url
            and time.monotonic() < plan.deadline):
        fallback = call(plan.fallback_endpoint_url, "fallback")
        return AttemptCall(combine_fallback(outcome, fallback.outcome), fallback, True, time.monotonic(), debug)
    return AttemptCall(outcome, primary, False, time.monotonic(), debug)
