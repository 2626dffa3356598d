"""What ``/openapi.json`` tells a reader beyond the routes and schemas: an ``operationId`` for every
operation (the view function's name in camelCase: ``list_jobs_view`` → ``listJobs``; SDK generators name
their methods after it), the API's introduction, and an example of each request body and of the error.

Installed as an apispec plugin (``DocumentPlugin``) so every operation and component passes through it.
"""

from __future__ import annotations

from typing import Any

from apispec import BasePlugin

DESCRIPTION = """\
Sluice calls your HTTP endpoints on your behalf: you register **jobs** (an endpoint plus its schedule,
retries, timeouts, concurrency and rate limits), trigger **runs** of them, and Sluice's workers call the
endpoint until a run succeeds or runs out of attempts, recording every attempt.

**Authentication.** Every `/v1` request carries an API key: `Authorization: Bearer sk_...`
(create one with `sluice keys create --project <project>`). A key belongs to one project and sees only
that project's jobs and runs. `/healthz`, `/readyz` and `/metrics` need no key.

**Errors** have one shape, the `Error` schema: `code`, `status`, `message`, `request_id`, and on 422 the
invalid fields under `errors`. Send `X-Request-Id` to choose the request id; every response echoes it.

**Pages.** Lists return at most `limit` items; when more follow, the `X-Next-Cursor` header holds the
`cursor` of the next page and `Link` its URL.
"""

EXAMPLES: dict[str, Any] = {
    "JobCreate": {
        "name": "Send digest", "slug": "send-digest", "endpoint_url": "https://example.com/hooks/digest",
        "cron": "0 8 * * *", "timezone": "Europe/Paris", "max_attempts": 5, "retry_strategy": "exponential",
        "timeout_secs": 60, "max_concurrency": 10, "tags": {"team": "growth"},
    },
    "JobPatch": {"timeout_secs": 120, "max_attempts": 3},
    "JobClone": {"name": "Send digest (copy)", "slug": "send-digest-copy"},
    "JobBatchToggle": {"ids": ["send-digest", "send-digest-copy"]},
    "DependencyCreate": {"depends_on_job_id": "import-users", "condition": "completed"},
    "Trigger": {
        "payload": {"user_id": 42}, "idempotency_key": "digest-42-2026-01-05", "priority": 5,
        "metadata": {"source": "signup"}, "tags": {"plan": "pro"},
    },
    "BulkTrigger": {"items": [{"payload": {"user_id": 42}}, {"payload": {"user_id": 43}, "priority": 1}]},
    "RunIds": {"run_ids": ["0190f8a2-5b7e-7c3d-9a1b-2c3d4e5f6a7b"]},
    "Error": {
        "code": 422, "status": "Unprocessable Entity", "message": "Validation failed",
        "errors": {"timeout_secs": ["Must be greater than or equal to 1 and less than or equal to 86400."]},
        "request_id": "0190f8a2-5b7e-7c3d-9a1b-2c3d4e5f6a7c",
    },
}


def operation_id(endpoint: str) -> str:
    """``jobs.list_jobs_view`` → ``listJobs``; ``healthz`` → ``healthz``."""
    words = endpoint.rsplit(".", 1)[-1].removesuffix("_view").split("_")
    return words[0] + "".join(word.capitalize() for word in words[1:])


class DocumentPlugin(BasePlugin):  # type: ignore[misc]
    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        for operation in operations.values():
            if isinstance(operation, dict):
                operation.setdefault("operationId", operation_id(rule.endpoint))

    def schema_helper(self, name: str, definition: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
        example = EXAMPLES.get(name)
        return {"example": example} if example is not None else None
