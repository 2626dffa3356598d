"""Terminal-run webhooks (§5.15) end to end: outbox row on a real terminal transition, delivery to a
local receiver, Standard Webhooks signatures, the retry schedule, policy refusal, duplicates, the sweep.

Run with ``SLUICE_TEST_DB_NAME=sluice_webhooks SLUICE_TEST_REDIS_DB=9``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from dramatiq import Worker
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook
from werkzeug import Request, Response

from scheduler.webhook_sweeps import RESEND_AFTER_SECS, enqueue_due_webhooks
from shared.clock import format_ts, utcnow
from shared.db.models import Job, Run, RunEvent, WebhookDelivery
from shared.messages.broker import make_broker
from shared.messages.enqueue import enqueue_webhooks
from shared.messages.layout import WEBHOOK_QUEUE
from shared.messages.queue_state import pending_messages, ready_messages
from shared.runs.commit import commit_and_apply
from shared.runs.effects import Effects
from shared.runs.moves import move
from shared.runs.status import RunStatus
from shared.runs.view import run_to_dict
from tests.factories import make_job, make_run
from worker.http import user_agent
from worker.webhook_actor import register_webhook_actor
from worker.webhooks import MAX_ATTEMPTS, RETRY_DELAYS_SECS, deliver

WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
PLAIN_SECRET = "a-plain-secret-of-some-length"

TYPE_BY_STATUS = {
    "completed": "run.completed", "failed": "run.failed", "system_failed": "run.failed",
    "timed_out": "run.timed_out", "crashed": "run.crashed", "canceled": "run.canceled",
    "expired": "run.expired",
}


@pytest.fixture()
def receiver() -> Iterator[HTTPServer]:
    """A threaded HTTP receiver on 127.0.0.1 (an IP literal: no resolution, private unless allowed)."""
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def hook_url(server: HTTPServer) -> str:
    return f"http://127.0.0.1:{server.port}/hook"


def respond_in_turn(server: HTTPServer, statuses: list[int]) -> None:
    """Answer /hook with ``statuses`` in order, then keep repeating the last one."""
    left = list(statuses)

    def handler(_request: Request) -> Response:
        status = left.pop(0) if len(left) > 1 else left[0]
        return Response("receiver says " + str(status), status=status)

    server.expect_request("/hook", method="POST").respond_with_handler(handler)


def finish_run(session, url: str | None, *, status: str = "completed", secret: str | None = None,
               result: Any = None) -> tuple[str, Effects]:
    """A job with ``url`` and a run made terminal through the real state machine; committed."""
    now = utcnow()
    job = make_job(session, webhook_url=url, webhook_secret=secret)
    if status == "expired":
        run = make_run(session, job, status="queued", now=now)
    else:
        run = make_run(session, job, status="executing", attempt=1, started_at=now, heartbeat_at=now, now=now)
    values = {"result": result} if status == "completed" else {"error": f"why it is {status}"}
    effects = Effects()
    assert move(session, run.id, RunStatus(status), now=now, effects=effects, values=values) is not None
    session.commit()
    return run.id, effects


def only_delivery(session) -> WebhookDelivery:
    session.expire_all()
    rows = session.scalars(sa.select(WebhookDelivery)).all()
    assert len(rows) == 1
    return rows[0]


def make_due(session, delivery_id: str) -> None:
    """Skip the wait before the next attempt (instead of sleeping minutes)."""
    session.execute(sa.update(WebhookDelivery).where(WebhookDelivery.id == delivery_id)
                    .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    session.commit()


def delivery_events(session, run_id: str) -> list[dict[str, Any]]:
    session.expire_all()
    rows = session.scalars(sa.select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.type == "webhook_delivery")
                           .order_by(RunEvent.created_at, RunEvent.id)).all()
    return [row.data for row in rows]


def send(delivery_id: str, session_factory, settings) -> None:
    deliver(delivery_id, session_factory=session_factory, settings=settings, now_fn=utcnow)


# --- the outbox ---------------------------------------------------------------------------------------

def test_terminal_transition_queues_one_event_and_one_message(session, settings, redis_client, receiver):
    run_id, effects = finish_run(session, hook_url(receiver), result={"ok": True})
    row = only_delivery(session)
    assert effects.webhooks == [row.id]
    assert (row.run_id, row.state, row.attempts, row.event_type) == (run_id, "pending", 0, "run.completed")
    broker = make_broker(settings, client=redis_client)
    commit_and_apply(session, effects, broker)
    assert pending_messages(broker, WEBHOOK_QUEUE) == 1


def test_no_webhook_url_queues_nothing(session):
    _, effects = finish_run(session, None)
    assert effects.webhooks == []
    assert session.scalars(sa.select(WebhookDelivery)).all() == []


# --- what is sent -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", sorted(TYPE_BY_STATUS))
def test_envelope_per_status(status, session, session_factory, settings, receiver):
    receiver.expect_request("/hook", method="POST").respond_with_data("", status=204)
    run_id, _ = finish_run(session, hook_url(receiver), status=status, result={"n": 1})
    send(only_delivery(session).id, session_factory, settings)

    (request, _), = receiver.log
    run = session.get(Run, run_id)
    assert json.loads(request.get_data()) == {
        "type": TYPE_BY_STATUS[status], "timestamp": format_ts(run.finished_at), "data": run_to_dict(run)}
    assert run_to_dict(run)["status"] == status
    assert only_delivery(session).state == "delivered"


def test_headers_and_whsec_signature_verify_with_standardwebhooks(session, session_factory, settings, receiver):
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    finish_run(session, hook_url(receiver), secret=WHSEC)
    delivery = only_delivery(session)
    before = int(time.time())
    send(delivery.id, session_factory, settings)

    (request, _), = receiver.log
    headers = dict(request.headers)
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == user_agent() == "sluice/0.1.0"
    assert headers["Webhook-Id"] == delivery.id
    assert before <= int(headers["Webhook-Timestamp"]) <= int(time.time())
    assert request.get_data() == delivery.body.encode()
    assert Webhook(WHSEC).verify(request.get_data(), headers) == json.loads(delivery.body)


def test_plain_secret_signature_is_hmac_of_utf8_bytes(session, session_factory, settings, receiver):
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    finish_run(session, hook_url(receiver), secret=PLAIN_SECRET)
    send(only_delivery(session).id, session_factory, settings)

    (request, _), = receiver.log
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode() + request.get_data()
    digest = hmac.new(PLAIN_SECRET.encode(), signed, hashlib.sha256).digest()
    assert request.headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def test_unsigned_without_secret(session, session_factory, settings, receiver):
    receiver.expect_request("/hook", method="POST").respond_with_data("ok")
    finish_run(session, hook_url(receiver))
    delivery = only_delivery(session)
    send(delivery.id, session_factory, settings)

    (request, _), = receiver.log
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == delivery.id
    assert request.headers["webhook-timestamp"].isdigit()


def test_secret_never_in_body_row_or_events(session, session_factory, settings, receiver):
    respond_in_turn(receiver, [500, 200])
    run_id, _ = finish_run(session, hook_url(receiver), secret=PLAIN_SECRET)
    delivery = only_delivery(session)
    send(delivery.id, session_factory, settings)
    make_due(session, delivery.id)
    send(delivery.id, session_factory, settings)

    assert len(receiver.log) == 2
    for request, _ in receiver.log:
        assert PLAIN_SECRET not in request.get_data(as_text=True)
    delivery = only_delivery(session)
    assert PLAIN_SECRET not in delivery.body + (delivery.last_error or "")
    events = session.scalars(sa.select(RunEvent).where(RunEvent.run_id == run_id)).all()
    assert PLAIN_SECRET not in json.dumps([(e.message, e.data) for e in events])


# --- outcomes and the retry schedule ------------------------------------------------------------------

def test_retried_on_500_then_delivered(session, session_factory, settings, receiver):
    respond_in_turn(receiver, [500, 200])
    run_id, _ = finish_run(session, hook_url(receiver))
    delivery_id = only_delivery(session).id
    run_before = run_to_dict(session.get(Run, run_id))

    send(delivery_id, session_factory, settings)
    row = only_delivery(session)
    assert (row.state, row.attempts, row.last_error) == ("pending", 1, "HTTP 500: receiver says 500")
    delay = (row.next_attempt_at - row.updated_at).total_seconds()
    assert RETRY_DELAYS_SECS[0] * 0.8 <= delay <= RETRY_DELAYS_SECS[0] * 1.2

    send(delivery_id, session_factory, settings)  # not due yet: nothing happens
    assert len(receiver.log) == 1

    make_due(session, delivery_id)
    send(delivery_id, session_factory, settings)
    row = only_delivery(session)
    assert (row.state, row.attempts, row.last_error) == ("delivered", 2, None)
    assert [r.headers["webhook-id"] for r, _ in receiver.log] == [delivery_id, delivery_id]
    assert delivery_events(session, run_id) == [
        {"event_type": "run.completed", "delivery_attempt": 1, "http_status": 500,
         "error": "HTTP 500: receiver says 500", "delivered": False},
        {"event_type": "run.completed", "delivery_attempt": 2, "http_status": 200, "error": None,
         "delivered": True},
    ]
    session.expire_all()
    assert run_to_dict(session.get(Run, run_id)) == run_before  # delivery never changes the run


def test_six_attempts_then_failed_with_the_schedule(session, session_factory, settings, receiver):
    respond_in_turn(receiver, [503])
    run_id, _ = finish_run(session, hook_url(receiver), status="failed")
    delivery_id = only_delivery(session).id
    for attempt in range(1, MAX_ATTEMPTS + 1):
        send(delivery_id, session_factory, settings)
        row = only_delivery(session)
        assert row.attempts == attempt
        if attempt < MAX_ATTEMPTS:
            nominal = RETRY_DELAYS_SECS[attempt - 1]
            delay = (row.next_attempt_at - row.updated_at).total_seconds()
            assert (row.state, nominal * 0.8 <= delay <= nominal * 1.2) == ("pending", True)
            make_due(session, delivery_id)
    assert row.state == "failed"
    send(delivery_id, session_factory, settings)  # nothing more once failed
    assert len(receiver.log) == MAX_ATTEMPTS
    events = delivery_events(session, run_id)
    assert [e["delivery_attempt"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(e == {"event_type": "run.failed", "delivery_attempt": e["delivery_attempt"], "http_status": 503,
                     "error": "HTTP 503: receiver says 503", "delivered": False} for e in events)


def test_each_failed_delivery_draws_its_own_jitter(session, session_factory, settings, receiver):
    """Two deliveries failing their first attempt wait different times (±20 % drawn per delivery)."""
    respond_in_turn(receiver, [500])
    finish_run(session, hook_url(receiver))
    finish_run(session, hook_url(receiver))
    rows = session.scalars(sa.select(WebhookDelivery)).all()
    for row in rows:
        send(row.id, session_factory, settings)
    session.expire_all()
    delays = {(row.next_attempt_at - row.updated_at).total_seconds() for row in
              session.scalars(sa.select(WebhookDelivery)).all()}
    assert len(delays) == 2
    assert all(RETRY_DELAYS_SECS[0] * 0.8 <= delay <= RETRY_DELAYS_SECS[0] * 1.2 for delay in delays)


def test_4xx_and_3xx_are_retried_too(session, session_factory, settings, receiver):
    respond_in_turn(receiver, [404, 302, 200])
    run_id, _ = finish_run(session, hook_url(receiver))
    delivery_id = only_delivery(session).id
    for _ in range(3):
        send(delivery_id, session_factory, settings)
        make_due(session, delivery_id)
    assert only_delivery(session).state == "delivered"
    assert [e["http_status"] for e in delivery_events(session, run_id)] == [404, 302, 200]


def test_connection_failure_is_retried(session, session_factory, settings, receiver):
    run_id, _ = finish_run(session, hook_url(receiver))
    receiver.stop()
    send(only_delivery(session).id, session_factory, settings)
    row = only_delivery(session)
    assert (row.state, row.attempts) == ("pending", 1)
    (event,) = delivery_events(session, run_id)
    assert event["http_status"] is None and event["error"].startswith("connection: ")


def test_policy_refusal_abandons(session, session_factory, settings, receiver):
    strict = settings.with_overrides(allow_private_endpoints=False)
    run_id, _ = finish_run(session, hook_url(receiver))
    send(only_delivery(session).id, session_factory, strict)

    assert receiver.log == []
    row = only_delivery(session)
    assert (row.state, row.attempts) == ("abandoned", 1)
    (event,) = delivery_events(session, run_id)
    assert event["delivered"] is False and event["http_status"] is None
    assert "address policy" in event["error"]
    make_due(session, row.id)
    send(row.id, session_factory, settings)  # abandoned is final, even if the policy changes
    assert receiver.log == []


def test_deleted_job_takes_its_deliveries_along(session, session_factory, settings, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    finish_run(session, hook_url(receiver))
    delivery_id = only_delivery(session).id
    session.execute(sa.delete(Job))
    session.commit()
    send(delivery_id, session_factory, settings)
    assert receiver.log == []


def test_live_secret_is_used(session, session_factory, settings, receiver):
    """The secret is read at each attempt from the live job (a rotated secret signs the next attempt)."""
    receiver.expect_request("/hook").respond_with_data("ok")
    finish_run(session, hook_url(receiver), secret=PLAIN_SECRET)
    session.execute(sa.update(Job).values(webhook_secret=WHSEC))
    session.commit()
    send(only_delivery(session).id, session_factory, settings)
    (request, _), = receiver.log
    Webhook(WHSEC).verify(request.get_data(), dict(request.headers))


def test_sealed_secrets_sign_deliveries_with_both_during_a_rotation(session, session_factory, settings, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    finish_run(session, hook_url(receiver), secret=settings.secret_box.seal(WHSEC))
    session.execute(sa.update(Job).values(webhook_secret_previous=settings.secret_box.seal(PLAIN_SECRET)))
    session.commit()
    send(only_delivery(session).id, session_factory, settings)
    (request, _), = receiver.log
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(WHSEC).verify(request.get_data(), dict(request.headers))
    plain_as_whsec = "whsec_" + base64.b64encode(PLAIN_SECRET.encode()).decode()
    Webhook(plain_as_whsec).verify(request.get_data(), dict(request.headers))


def test_orphaned_last_attempt_ends_failed_without_sending(session, session_factory, settings, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    finish_run(session, hook_url(receiver))
    row = only_delivery(session)
    row.attempts = MAX_ATTEMPTS  # the 6th attempt was claimed, then its worker died
    session.commit()
    make_due(session, row.id)
    send(row.id, session_factory, settings)
    assert receiver.log == []
    assert only_delivery(session).state == "failed"


# --- duplicates ---------------------------------------------------------------------------------------

def test_concurrent_duplicate_messages_make_one_attempt(session, session_factory, settings, receiver):
    respond_in_turn(receiver, [500])
    run_id, _ = finish_run(session, hook_url(receiver))
    delivery_id = only_delivery(session).id
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        send(delivery_id, session_factory, settings)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(receiver.log) == 1
    assert only_delivery(session).attempts == 1
    assert len(delivery_events(session, run_id)) == 1


def test_actor_delivers_and_a_duplicate_message_is_one_attempt(session, session_factory, settings, redis_client,
                                                              receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    broker = make_broker(settings, client=redis_client)
    register_webhook_actor(broker, session_factory=session_factory, settings=settings)
    run_id, effects = finish_run(session, hook_url(receiver))
    delivery_id = effects.webhooks[0]
    effects.webhooks.append(delivery_id)  # the same message twice
    commit_and_apply(session, effects, broker)
    assert ready_messages(broker, WEBHOOK_QUEUE) == 2  # one message (keyed by the delivery), fetched twice

    worker = Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while pending_messages(broker, WEBHOOK_QUEUE) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert pending_messages(broker, WEBHOOK_QUEUE) == 0
    assert len(receiver.log) == 1
    assert only_delivery(session).state == "delivered"
    assert len(delivery_events(session, run_id)) == 1


# --- the sweep ----------------------------------------------------------------------------------------

def sweep(session, broker, now: datetime) -> int:
    count = enqueue_due_webhooks(session, now, broker)
    session.commit()
    return count


def test_sweep_enqueues_due_retries_once_and_resends_lost_messages(session, session_factory, settings,
                                                                   redis_client, receiver):
    respond_in_turn(receiver, [500])
    broker = make_broker(settings, client=redis_client)
    finish_run(session, hook_url(receiver))
    row = only_delivery(session)
    created = row.created_at

    # Fresh: its message was enqueued after commit; re-sent only after RESEND_AFTER_SECS of silence.
    assert sweep(session, broker, created + timedelta(seconds=1)) == 0
    lost_at = created + timedelta(seconds=RESEND_AFTER_SECS + 1)
    assert sweep(session, broker, lost_at) == 1
    assert sweep(session, broker, lost_at) == 0
    assert pending_messages(broker, WEBHOOK_QUEUE) == 1

    redis_client.delete(f"{broker.namespace}:{WEBHOOK_QUEUE}", f"{broker.namespace}:{WEBHOOK_QUEUE}.msgs")
    send(row.id, session_factory, settings)  # a worker took the message; attempt 1 fails: retry in about 5 s
    row = only_delivery(session)
    assert sweep(session, broker, row.updated_at) == 0
    assert sweep(session, broker, row.next_attempt_at) == 1
    assert sweep(session, broker, row.next_attempt_at + timedelta(seconds=1)) == 0
    assert pending_messages(broker, WEBHOOK_QUEUE) == 1


def test_sweep_never_resends_a_message_still_waiting(session, settings, redis_client, receiver):
    """No worker takes webhook messages (an outage): the delivery's message stays in the queue, and the
    sweep leaves it alone however long it waits; once Redis has lost it, the sweep sends it again."""
    broker = make_broker(settings, client=redis_client)
    finish_run(session, hook_url(receiver))
    created = only_delivery(session).created_at
    silence = timedelta(seconds=RESEND_AFTER_SECS + 1)
    assert sweep(session, broker, created + silence) == 1  # never enqueued after its commit here: sent
    for passes in range(2, 6):
        assert sweep(session, broker, created + passes * silence) == 0
    assert pending_messages(broker, WEBHOOK_QUEUE) == 1
    redis_client.flushdb()  # Redis restarted without its data
    assert sweep(session, broker, created + 6 * silence) == 1
    assert pending_messages(broker, WEBHOOK_QUEUE) == 1


def test_sweep_is_bounded_per_pass_and_goes_on_where_it_stopped(session, settings, redis_client, receiver):
    """Five pending deliveries whose messages wait in the queue, two per pass: each pass checks the next
    two instead of the same first two again, and none is sent twice."""
    broker = make_broker(settings, client=redis_client)
    for _ in range(5):
        finish_run(session, hook_url(receiver))
    ids = [row.id for row in session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.next_attempt_at))]
    enqueue_webhooks(broker, ids)
    later = max(row.created_at for row in session.scalars(sa.select(WebhookDelivery))) + timedelta(
        seconds=RESEND_AFTER_SECS + 1)
    checked: list[int] = []
    for _ in range(3):
        assert enqueue_due_webhooks(session, later, broker, limit=2) == 0
        session.commit()
        session.expire_all()
        checked.append(session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)
                                      .where(WebhookDelivery.updated_at == later)) or 0)
    assert checked == [2, 4, 5]
    assert pending_messages(broker, WEBHOOK_QUEUE) == 5


def test_sweep_recovers_a_claim_whose_worker_died(session, settings, redis_client, receiver):
    broker = make_broker(settings, client=redis_client)
    finish_run(session, hook_url(receiver))
    row = only_delivery(session)
    claimed_at = utcnow()
    row.attempts, row.updated_at, row.next_attempt_at = 1, claimed_at, claimed_at + timedelta(seconds=60)
    session.commit()
    assert sweep(session, broker, claimed_at + timedelta(seconds=59)) == 0
    assert sweep(session, broker, claimed_at + timedelta(seconds=60)) == 1


def test_sweep_ignores_finished_deliveries(session, session_factory, settings, redis_client, receiver):
    receiver.expect_request("/hook").respond_with_data("ok")
    broker = make_broker(settings, client=redis_client)
    finish_run(session, hook_url(receiver))
    send(only_delivery(session).id, session_factory, settings)
    assert sweep(session, broker, utcnow() + timedelta(days=1)) == 0
