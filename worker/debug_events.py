"""``debug`` run events (CONTRACT §4.8, §10.2): one per call of a run triggered with ``debug_mode``.

Data: which call (``primary``/``fallback``), the attempt, the URL (user-info stripped), the request
headers, and the response status, headers and first 4 KiB of the body (as text, invalid UTF-8 replaced).
``Authorization``, ``Cookie``, ``Set-Cookie`` and ``webhook-signature`` values are redacted. The request
body is not repeated: it is the run's ``payload``.
"""

from __future__ import annotations

from typing import Any

from shared.egress.addresses import strip_userinfo
from shared.runs.attempts import clean_text
from worker.call_result import CallResult

DEBUG_BODY_BYTES = 4096
REDACTED = "[redacted]"
SECRET_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "webhook-signature"})


def redact(headers: dict[str, str]) -> dict[str, str]:
    return {name: REDACTED if name.lower() in SECRET_HEADERS else (clean_text(value) or "")
            for name, value in headers.items()}


def debug_event(which: str, attempt: int, url: str, request_headers: dict[str, str],
                result: CallResult) -> dict[str, Any]:
    head = result.body[:DEBUG_BODY_BYTES]
    return {
        "call": which,
        "attempt": attempt,
        "request": {"method": "POST", "url": strip_userinfo(url), "headers": redact(request_headers)},
        "response": None if result.status is None else {
            "status": result.status,
            "headers": redact(result.headers),
            "body": clean_text(head.decode("utf-8", errors="replace")),
            "body_truncated": len(result.body) > DEBUG_BODY_BYTES or result.truncated,
        },
        "error": clean_text(result.outcome.error),
    }
