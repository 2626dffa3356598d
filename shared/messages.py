"""Queue and actor names, and enqueueing by actor name (the API and scheduler never import ``worker``).

A message carries only a run id (dramatiq's advice: send ids, not objects). PostgreSQL stays the source
of truth: a lost message is re-created by the sweeper (``scheduler.sweeps``) and a duplicate is harmless
because a worker starts an attempt only through a conditional ``queued → executing`` update.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from shared.config import Settings

DISPATCH_ACTOR = "dispatch_run"
WEBHOOK_ACTOR = "deliver_webhook"
DISPATCH_QUEUE = "sluice.runs"
WEBHOOK_QUEUE = "sluice.webhooks"


def make_broker(settings: Settings, client: Any = None) -> RedisBroker:
    """The Redis broker shared by every process; ``client`` lets ``sluice dev`` pass an embedded Redis."""
    broker = RedisBroker(client=client) if client is not None else RedisBroker(url=settings.redis_url)
    broker.declare_queue(DISPATCH_QUEUE)
    broker.declare_queue(WEBHOOK_QUEUE)
    return broker


def _message(queue_name: str, actor_name: str, arg: str) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=(arg,), kwargs={},
        options={"redis_message_id": str(uuid.uuid4())},
    )


def enqueue_many(broker: RedisBroker, queue_name: str, actor_name: str, ids: Iterable[str]) -> int:
    """Enqueue one message per id in a single Redis round trip; return the number enqueued.

    Writes exactly what dramatiq's ``dispatch.lua`` ``enqueue`` command writes — the encoded message in
    the ``<queue>.msgs`` hash under its ``redis_message_id`` and that id pushed on the ``<queue>`` list —
    but as one HSET and one RPUSH per 1,000 messages instead of one script call per message (a bulk
    trigger enqueues 1,000 runs). The script's other step, a heartbeat for the sender's broker id, only
    matters to consumers (it guards their un-acked messages), so a sender can skip it.
    """
    messages = [_message(queue_name, actor_name, value) for value in ids]
    if not messages:
        return 0
    queue_key = f"{broker.namespace}:{queue_name}"
    pipe = broker.client.pipeline(transaction=False)
    for start in range(0, len(messages), 1000):
        chunk = messages[start:start + 1000]
        pipe.hset(f"{queue_key}.msgs", mapping={m.options["redis_message_id"]: m.encode() for m in chunk})
        pipe.rpush(queue_key, *[m.options["redis_message_id"] for m in chunk])
    pipe.execute()
    return len(messages)


def enqueue_runs(broker: RedisBroker, run_ids: Iterable[str]) -> int:
    return enqueue_many(broker, DISPATCH_QUEUE, DISPATCH_ACTOR, run_ids)


def enqueue_webhooks(broker: RedisBroker, delivery_ids: Iterable[str]) -> int:
    return enqueue_many(broker, WEBHOOK_QUEUE, WEBHOOK_ACTOR, delivery_ids)


def pending_messages(broker: RedisBroker, queue_name: str = DISPATCH_QUEUE) -> int:
    """Messages enqueued and not yet acknowledged (ready plus in flight), for the sweeper and metrics."""
    return int(broker.client.hlen(f"{broker.namespace}:{queue_name}.msgs"))


def ready_messages(broker: RedisBroker, queue_name: str = DISPATCH_QUEUE) -> int:
    """Messages waiting in the queue (not yet fetched by a worker)."""
    return int(broker.client.llen(f"{broker.namespace}:{queue_name}"))
