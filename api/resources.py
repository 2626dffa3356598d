"""The resources only the API serves, described once (``shared.resource``): the trigger's answer, the
bulk and batch results, the error body and the service probes.

The trigger result renders through its description (``TRIGGER_RESULT.render(outcome)``). The other bodies
are small envelopes of computed values, put together by the one function that answers them (the bulk
trigger's ``to_dict``, the views, ``api.errors.error_body``); their descriptions document them, and the
served-body test holds every one of them to its description.
"""

from __future__ import annotations

from shared.resource import ARRAY, BOOLEAN, INTEGER, OBJECT, STRING, Field, Resource
from shared.runs.resource import RUN

TRIGGER_RESULT = RUN.extended("TriggerResult", (
    Field("payload_hash", STRING, source="run.payload_hash", description="SHA-256 of the canonical payload"),
    Field("idempotency_hit", BOOLEAN, description="The run already existed under this idempotency key"),
    Field("dry_run", BOOLEAN, optional=True, description="Only on dry runs: nothing was stored"),
), prefix="run.", nullable=("id",))  # a dry run's preview has no id

BULK_TRIGGER_ITEM = Resource("BulkResultItem", (
    Field("id", STRING),
    Field("status", STRING),
    Field("run_token", STRING, nullable=True),
    Field("idempotency_hit", BOOLEAN),
))
BULK_TRIGGER_RESULT = Resource("BulkTriggerResult", (
    Field("batch_id", STRING),
    Field("results", ARRAY, items=BULK_TRIGGER_ITEM),
    Field("total", INTEGER),
    Field("created", INTEGER),
))

BULK_CANCEL_ITEM = Resource("BulkCancelItem", (
    Field("id", STRING),
    Field("status", STRING, nullable=True),
    Field("error", STRING, nullable=True),
))
BULK_CANCEL_RESULT = Resource("BulkCancelResult", (
    Field("results", ARRAY, items=BULK_CANCEL_ITEM),
    Field("total", INTEGER),
    Field("canceled", INTEGER),
    Field("failed", INTEGER),
))

BULK_REPLAY_ITEM = Resource("BulkReplayItem", (
    Field("original_run_id", STRING),
    Field("new_run_id", STRING, nullable=True),
    Field("status", STRING),
    Field("error", STRING, nullable=True),
))
BULK_REPLAY_RESULT = Resource("BulkReplayResult", (
    Field("results", ARRAY, items=BULK_REPLAY_ITEM),
    Field("total", INTEGER),
    Field("replayed", INTEGER),
))

BATCH_TOGGLE_RESULT = Resource("BatchToggleResult", (
    Field("updated", INTEGER, description="How many jobs changed state"),
))

ERROR = Resource("Error", (
    Field("code", INTEGER, description="HTTP status code"),
    Field("status", STRING, description="HTTP reason phrase"),
    Field("message", STRING, description="One human sentence"),
    Field("errors", OBJECT, optional=True, description="Only on 422: field -> list of messages"),
    Field("request_id", STRING, description="The X-Request-Id of the response"),
))

_CHECKS = Resource("Checks", (Field("database", STRING, enum=("ok", "unavailable", "outdated")),
                              Field("redis", STRING, enum=("ok", "unavailable"))))
NOT_READY = ERROR.extended("NotReady", (
    Field("checks", _CHECKS, description="Which backing service is unavailable"),
), before="request_id")

STATUS = Resource("Status", (Field("status", STRING, enum=("ok",)),))
READINESS = STATUS.extended("Readiness", (Field("checks", _CHECKS),))
