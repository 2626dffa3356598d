"""Enqueueing by actor name: many messages and their wake tokens in one atomic Redis call."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from shared import redis_keys
from shared.messages.layout import DISPATCH_ACTOR, DISPATCH_QUEUE, WEBHOOK_ACTOR, WEBHOOK_QUEUE, messages_key, queue_key
from shared.messages.scripts import ENQUEUE_SCRIPT

# One enqueue wakes at most this many idle consumers, and a wake list never holds more tokens: enough for a
# large fleet to start on a burst together; tokens left over when nobody was idle cost each later idle
# consumer a wasted look, so their number is bounded.
WAKE_TOKENS_MAX = 256
WAKE_TTL_MS = 60_000  # a token nobody took within a minute is stale: idle consumers fetch before they block


_SCRIPT_NAME = "sluice_enqueue"  # its key in the broker's ``scripts``, beside dramatiq's "dispatch"


def _message(queue_name: str, actor_name: str, arg: str, message_id: str | None = None) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=(arg,), kwargs={},
        options={"redis_message_id": message_id or str(uuid.uuid4())},
    )


def enqueue_many(broker: RedisBroker, queue_name: str, actor_name: str, ids: Iterable[str], *,
                 keyed: bool = False) -> int:
    """Enqueue one message per id in a single atomic Redis call; return the number enqueued.

    Writes exactly what dramatiq's ``dispatch.lua`` ``enqueue`` command writes — the encoded message in
    the ``<queue>.msgs`` hash under its ``redis_message_id`` and that id pushed on the ``<queue>`` list —
    plus the queue's wake tokens, in one script call (``ENQUEUE_SCRIPT``) instead of one per message (a
    bulk trigger enqueues 1,000 runs): no message is ever half-written, and no token is seen before its
    message. The script's other step, a heartbeat for the sender's broker id, only matters to consumers
    (it guards their un-acked messages), so a sender can skip it. Any dramatiq Redis broker can be
    passed; a stock one's workers read the messages and ignore the tokens.

    ``keyed``: each message's id is the id it carries, so ``messages_waiting`` can tell whether it is
    still in the queue (webhook deliveries).
    """
    messages = [_message(queue_name, actor_name, value, value if keyed else None) for value in ids]
    if not messages:
        return 0
    encoded = [(m.options["redis_message_id"], m.encode()) for m in messages]
    return enqueue_messages(broker, queue_name, encoded, len(messages))


def enqueue_messages(broker: RedisBroker, queue_name: str, messages: list[tuple[str, bytes]], tokens: int) -> int:
    """``ENQUEUE_SCRIPT``: ``(redis message id, encoded message)`` pairs and ``tokens`` wake tokens, atomically."""
    args: list[Any] = [tokens, WAKE_TOKENS_MAX, WAKE_TTL_MS]
    for message_id, data in messages:
        args += (message_id, data)
    keys = [queue_key(broker, queue_name), messages_key(broker, queue_name),
            redis_keys.queue_wake(broker.namespace, queue_name)]
    return int(_enqueue_script(broker)(keys=keys, args=args))


def _enqueue_script(broker: RedisBroker) -> Any:
    """``ENQUEUE_SCRIPT`` as redis-py's Script, registered once per broker beside dramatiq's own scripts
    (registering hashes the script: per call, a few microseconds of every trigger)."""
    script = broker.scripts.get(_SCRIPT_NAME)
    if script is None:  # two threads may both register: the same script, harmless
        script = broker.scripts[_SCRIPT_NAME] = broker.client.register_script(ENQUEUE_SCRIPT)
    return script


def enqueue_runs(broker: RedisBroker, run_ids: Iterable[str]) -> int:
    return enqueue_many(broker, DISPATCH_QUEUE, DISPATCH_ACTOR, run_ids)


def enqueue_webhooks(broker: RedisBroker, delivery_ids: Iterable[str]) -> int:
    return enqueue_many(broker, WEBHOOK_QUEUE, WEBHOOK_ACTOR, delivery_ids, keyed=True)
