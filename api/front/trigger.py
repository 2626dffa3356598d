"""``POST /v1/jobs/{job}/trigger`` in front of Flask: the common trigger, the product's hot path.

Served: a valid key with ``jobs:trigger``, no query, an empty body or a JSON object the trigger schema
takes, no ``Idempotency-Key`` and no dry run, an enabled job whose payload schema accepts the payload and
that needs no transaction (no dedup window, no dependency edges). Then the trigger is one atomic INSERT
(``shared.triggers.manual.trigger_run`` in autocommit), rendered like Flask's view renders it. Everything
else is Flask's. Nothing is written before the INSERT, so a refusal raised before it (a disabled job, a
payload the job's schema refuses) is still a decline.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from api.body import parse_json_body
from api.context import Services
from api.front.layer import Answer, FrontRequest
from api.paths import ASCII_SEGMENT
from api.resources import TRIGGER_RESULT
from api.schemas.triggers import IDEMPOTENCY_HEADER, TRACEPARENT_HEADER, TriggerSchema
from shared import json_codec
from shared.clock import utcnow
from shared.errors import SluiceError
from shared.runs.effects import Effects, apply_after_commit
from shared.triggers.manual import find_key_and_trigger_job, needs_transaction, trigger_job_of, trigger_run

_IDEMPOTENCY_HEADER = "HTTP_" + IDEMPOTENCY_HEADER.upper().replace("-", "_")
_TRACEPARENT_HEADER = "HTTP_" + TRACEPARENT_HEADER.upper()


class Trigger:
    method = "POST"
    path = re.compile(rf"/v1/jobs/({ASCII_SEGMENT})/trigger")
    rule = "/v1/jobs/<job>/trigger"
    reads_body = True

    def __init__(self, services: Services) -> None:
        self._services = services
        self._schema = TriggerSchema()

    def serve(self, request: FrontRequest, session: Session) -> Answer | None:
        environ = request.environ
        if request.query or _IDEMPOTENCY_HEADER in environ:
            return None
        body = self._plain_body(request)
        digest = request.digest()
        if body is None or body.get("dry_run"):
            return None
        row = find_key_and_trigger_job(session, digest, request.match.group(1))
        principal = request.admit(session, None if row is None else row._mapping, "jobs:trigger")
        if principal is None or row is None or row.id is None:
            return None
        job, has_edges = trigger_job_of(row)
        if needs_transaction(job, body, has_edges):
            return None
        effects = Effects()
        request.writing()
        try:
            outcome = trigger_run(session, job, body, actor=principal.actor, now=utcnow(), effects=effects,
                                  has_edges=has_edges, traceparent=environ.get(_TRACEPARENT_HEADER))
        except SluiceError:  # raised before the INSERT (disabled job, payload refused by its schema, …)
            return None
        apply_after_commit(effects, self._services.broker)  # autocommit: the INSERT is committed
        created = outcome.created
        location = [("Location", f"/v1/runs/{outcome.run.id}")] if created else []
        return 201 if created else 200, json_codec.dumps(TRIGGER_RESULT.render(outcome)), location

    def _plain_body(self, request: FrontRequest) -> dict[str, Any] | None:
        """The schema-loaded body, or ``None`` when the parser or the schema would have anything to say."""
        mimetype = request.environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        try:
            parsed = parse_json_body(request.body, mimetype, optional=True)
            return self._schema.load(parsed) if isinstance(parsed, dict) else None  # type: ignore[no-any-return]
        except Exception:  # malformed, too deep, refused by the schema, …: Flask explains it to the caller
            return None
