"""Terminal-run webhook delivery (CONTRACT §5.15): one attempt per call, all state in PostgreSQL.

``deliver`` runs one attempt in three steps, each short and in its own transaction except the call:

1. **Claim** — read the ``webhook_deliveries`` row and the live job's secret; skip unless the row is
   ``pending`` and due. One conditional UPDATE (``attempts`` = the value read, still ``pending``, still
   due) bumps ``attempts`` and pushes ``next_attempt_at`` a lease ahead, so a duplicate message — now
   or during the call — finds nothing to do, and a worker that dies mid-call leaves a row the sweeper
   (``scheduler.webhook_sweeps``) re-enqueues once the lease has passed.
2. **Call** — POST the stored body bytes through the worker's HTTP client (``worker.http``, the same one
   endpoint calls use: 10 s, no redirects, address policy checked on this attempt's one resolution,
   connection to a checked address).
3. **Record** — conditional on ``attempts`` still being ours: ``delivered`` on 2xx, ``abandoned`` when the
   address policy refused the destination, else ``pending`` with the next due time, or ``failed``
   after the 6th attempt; plus one ``webhook_delivery`` run event. The run itself is never touched.

Retries are not dramatiq's (its broker has none): the sweeper enqueues due rows.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from shared.clock import format_ts
from shared.config import Settings
from shared.db.models import Job, WebhookDelivery
from shared.egress.addresses import AddressPolicy, AddressRefused, resolve_checked
from shared.ids import uuid7
from shared.metrics import observe_webhook_delivery
from shared.runs.retries import RETRYABLE, Outcome
from shared.runs.transitions import event, insert_events
from shared.webhooks.sealing import SecretBox
from shared.webhooks.signing import signature_headers
from worker.http import PostFunction, post, user_agent

log = logging.getLogger("sluice.webhooks")

MAX_ATTEMPTS = 6
RETRY_DELAYS_SECS = (5, 30, 120, 600, 1800)  # before attempts 2..6
JITTER = 0.2  # each delay is multiplied by a uniform factor in [1 - JITTER, 1 + JITTER]
TIMEOUT_SECS = 10
# A claimed attempt keeps the row "not due" this long. It must outlast the call plus the two short
# transactions around it; if the worker dies, the sweeper picks the row up again after it.
CLAIM_LEASE_SECS = 60
MAX_ERROR_BODY = 1024  # response bytes read on failure: enough for ``HTTP <status>: <first 1 KiB>``

def retry_delay_secs(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based, < MAX_ATTEMPTS), jittered ±20 %."""
    nominal = RETRY_DELAYS_SECS[attempt - 1]
    return nominal * (rng or random).uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class _Claim:
    """One claimed attempt. ``secrets`` (sealed, current first) stay out of ``repr``."""

    delivery_id: str
    run_id: str
    job_id: str
    event_type: str
    url: str
    body: bytes
    attempt: int
    secrets: tuple[str, ...] = field(repr=False)


class _PolicyResolver:
    """``resolve_checked`` for the HTTP client, remembering whether the address policy said no.

    ``post`` reports a policy refusal as a non-retryable ``client`` failure, the same class as a 4xx;
    webhooks retry a 4xx but abandon a refused destination, so the distinction is kept here.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.refused = False

    def __call__(self, url: str) -> tuple[str, int, list[str]]:
        try:
            return resolve_checked(url, policy=self.policy)
        except AddressRefused:
            self.refused = True
            raise


def deliver(delivery_id: str, *, session_factory: sessionmaker[Session], settings: Settings,
            now_fn: Callable[[], datetime], http_post: PostFunction = post,
            rng: random.Random | None = None) -> datetime | None:
    """Make one delivery attempt for ``delivery_id`` if it is pending and due; otherwise do nothing.
    Returns when the next attempt is due if this one failed and another is scheduled (the scheduler's sweep
    enqueues it then), else ``None``.

    Safe to call for any id, any number of times, concurrently: only the caller whose conditional
    claim succeeds sends anything. Never raises for an endpoint's failure; database errors propagate.
    """
    claim = _claim(session_factory, delivery_id, now_fn())
    if claim is None:
        return None
    resolver = _PolicyResolver(settings.address_policy)
    outcome = _send(claim, resolver, now_fn, http_post, settings.secret_box)
    return _record(session_factory, claim, outcome, refused=resolver.refused, now=now_fn(), rng=rng)


def _claim(session_factory: sessionmaker[Session], delivery_id: str, now: datetime) -> _Claim | None:
    with session_factory() as session, session.begin():
        row = session.execute(
            sa.select(WebhookDelivery, Job.webhook_secret, Job.webhook_secret_previous)
            .join(Job, Job.id == WebhookDelivery.job_id)
            .where(WebhookDelivery.id == delivery_id)
        ).first()
        if row is None:  # unknown id, or the job (and with it the row) was deleted
            return None
        delivery, secret, previous = row
        if delivery.state != "pending" or delivery.next_attempt_at > now:
            return None
        if delivery.attempts >= MAX_ATTEMPTS:
            # The last attempt was claimed but its worker died before recording it.
            _finish_orphan(session, delivery, now)
            return None
        claimed = session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.attempts == delivery.attempts,
                   WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
            .values(attempts=delivery.attempts + 1, updated_at=now,
                    next_attempt_at=now + timedelta(seconds=CLAIM_LEASE_SECS))
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None  # a duplicate message won the race
        return _Claim(delivery.id, delivery.run_id, delivery.job_id, delivery.event_type, delivery.url,
                      delivery.body.encode("utf-8"), delivery.attempts + 1,
                      tuple(value for value in (secret, previous) if value))


def _finish_orphan(session: Session, delivery: WebhookDelivery, now: datetime) -> None:
    session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery.id, WebhookDelivery.attempts == delivery.attempts,
               WebhookDelivery.state == "pending")
        .values(state="failed", updated_at=now,
                last_error=delivery.last_error or "worker lost during the last attempt")
        .execution_options(synchronize_session=False)
    )
    log.warning("webhook failed: last attempt lost its worker", extra={
        "delivery_id": delivery.id, "run_id": delivery.run_id, "job_id": delivery.job_id})


def _send(claim: _Claim, resolver: _PolicyResolver, now_fn: Callable[[], datetime],
          http_post: PostFunction, box: SecretBox) -> Outcome:
    timestamp = int(now_fn().timestamp())
    try:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": user_agent(),
            "webhook-id": claim.delivery_id,
            "webhook-timestamp": str(timestamp),
            **signature_headers(box.open_all(*claim.secrets), claim.delivery_id, timestamp, claim.body),
        }
        result = http_post(claim.url, claim.body, headers, deadline=time.monotonic() + TIMEOUT_SECS,
                           resolve=resolver, now=now_fn, max_body=MAX_ERROR_BODY, timeout_secs=TIMEOUT_SECS)
    except Exception:
        # A Sluice-side bug must not leave the row claimed until the lease ends: record it as a
        # failed attempt (retried) and keep the traceback in the log. Headers are never logged.
        log.exception("webhook attempt raised", extra={
            "delivery_id": claim.delivery_id, "run_id": claim.run_id, "job_id": claim.job_id})
        return Outcome(RETRYABLE, "internal", "internal: unexpected error while sending")
    return result.outcome


def _record(session_factory: sessionmaker[Session], claim: _Claim, outcome: Outcome, *, refused: bool,
            now: datetime, rng: random.Random | None) -> datetime | None:
    values: dict[str, Any] = {"updated_at": now, "last_error": outcome.error}
    if outcome.is_success:
        values["state"] = "delivered"
        message = "webhook delivered"
    elif refused:
        values["state"] = "abandoned"
        message = "webhook abandoned: destination refused by address policy"
    elif claim.attempt >= MAX_ATTEMPTS:
        values["state"] = "failed"
        message = f"webhook failed after {MAX_ATTEMPTS} attempts"
    else:
        next_at = now + timedelta(seconds=retry_delay_secs(claim.attempt, rng))
        values["next_attempt_at"] = next_at
        message = f"webhook attempt failed; next attempt at {format_ts(next_at)}"
    with session_factory() as session, session.begin():
        updated = session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id == claim.delivery_id, WebhookDelivery.attempts == claim.attempt,
                   WebhookDelivery.state == "pending")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if updated.rowcount != 1:  # type: ignore[attr-defined]
            # The row is gone (job deleted) or our lease ran out and another attempt took over.
            log.warning("webhook outcome discarded", extra={
                "delivery_id": claim.delivery_id, "run_id": claim.run_id, "job_id": claim.job_id})
            return None
        insert_events(session, [event(uuid7(), claim.run_id, "webhook_delivery", {
            "event_type": claim.event_type,
            "delivery_attempt": claim.attempt,
            "http_status": outcome.http_status,
            "error": outcome.error,
            "delivered": outcome.is_success,
        }, now, message)])
    observe_webhook_delivery(values.get("state", "retrying"))
    log.info(message, extra={
        "delivery_id": claim.delivery_id, "run_id": claim.run_id, "job_id": claim.job_id,
        "attempt": claim.attempt, "http_status": outcome.http_status})
    retry_at: datetime | None = values.get("next_attempt_at")
    return retry_at
