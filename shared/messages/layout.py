"""Queue and actor names, and the Redis key layout of dramatiq's broker (the API and scheduler never import ``worker``).

A message carries only a run id or a webhook delivery id (dramatiq's advice: send ids, not objects).
PostgreSQL stays the source of truth: a lost message is re-created by the sweeper (``scheduler.sweeps``)
and a duplicate is harmless because a worker starts an attempt only through a conditional
``queued → executing`` update.

The layout, as dramatiq's ``dispatch.lua`` documents it: ``<ns>:<queue>`` a list of message ids,
``<ns>:<queue>.msgs`` a hash id → encoded message, ``<ns>:__acks__.<broker id>.<queue>`` the ids a
consumer fetched and has not acknowledged, ``<ns>:__heartbeats__`` a sorted set of broker ids by last
heartbeat (ms). ``tests/integration/test_library_contracts.py`` fails if an installed dramatiq changes it.
"""

from __future__ import annotations

from typing import Protocol

DISPATCH_ACTOR = "dispatch_run"
WEBHOOK_ACTOR = "deliver_webhook"
DISPATCH_QUEUE = "sluice.runs"
WEBHOOK_QUEUE = "sluice.webhooks"


class Namespaced(Protocol):
    """A dramatiq Redis broker, as far as its key layout goes."""

    namespace: str


def queue_key(broker: Namespaced, queue_name: str) -> str:
    return f"{broker.namespace}:{queue_name}"


def messages_key(broker: Namespaced, queue_name: str) -> str:
    return f"{queue_key(broker, queue_name)}.msgs"


def acks_key(broker: Namespaced, broker_id: str, queue_name: str) -> str:
    return f"{broker.namespace}:__acks__.{broker_id}.{queue_name}"


def heartbeats_key(broker: Namespaced) -> str:
    return f"{broker.namespace}:__heartbeats__"
