"""What one endpoint call produced (CONTRACT §5.3, §5.16): the outcome, the response, the phase timings."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from shared.runs.retries import SUCCESS, Outcome, classify_status, http_error_text, parse_retry_after

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]*@")


@dataclass(frozen=True)
class CallTimings:
    """Whole milliseconds per phase (§5.16); ``None`` for a phase that did not complete.

    connect: TCP connect start → TCP (+TLS) established, 0 on a reused connection; ttfb: request fully sent
    → response head read; transfer: head read → body fully read.
    """

    connect_ms: int | None = None
    ttfb_ms: int | None = None
    transfer_ms: int | None = None


@dataclass(frozen=True)
class CallResult:
    """What one call produced. ``body`` holds at most ``max_body`` bytes; ``truncated`` says more came."""

    outcome: Outcome
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # names lowercased, repeats joined by ", "
    body: bytes = b""
    truncated: bool = False
    timings: CallTimings = field(default_factory=CallTimings)
    retry_after_secs: int | None = None  # parsed Retry-After, only on 429 and 503


def failed_call(kind: str, error_class: str, reason: str, timings: CallTimings | None = None) -> CallResult:
    """A call that got no response: ``error`` reads ``<class>: <reason>``, user-info stripped from URLs."""
    error = _USERINFO.sub(r"\1", f"{error_class}: {reason}")
    return CallResult(Outcome(kind, error_class, error), timings=timings or CallTimings())


def answered_call(status: int, headers: dict[str, str], body: bytes, truncated: bool, timings: CallTimings,
                  now: Callable[[], datetime]) -> CallResult:
    """A call that got a response: its status decides the outcome; ``now`` dates an HTTP-date Retry-After."""
    headers = {name.lower(): value for name, value in headers.items()}
    kind, error_class = classify_status(status)
    error = None if kind == SUCCESS else _USERINFO.sub(r"\1", http_error_text(status, body))
    retry_after = parse_retry_after(headers.get("retry-after"), now()) if status in (429, 503) else None
    return CallResult(Outcome(kind, error_class, error, status), status, headers, body, truncated, timings,
                      retry_after)
