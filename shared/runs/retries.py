"""Retry policy and outcome classification (CONTRACT §5.3, §5.4, §4.6). Pure: no I/O, no clock.

Used by the worker (classify a call, schedule the next attempt) and by the scheduler's reaper (a lost
worker is a failed attempt too). Callers pass ``now`` and a random source; nothing here reads globals
except the default ``random`` module when no ``rng`` is given.
"""

from __future__ import annotations

import codecs
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

STRATEGIES = ("exponential", "linear", "fixed", "custom")

MAX_EXPONENTIAL_DELAY_SECS = 3600
JITTER_LOW, JITTER_HIGH = 0.8, 1.2
MAX_RETRY_AFTER_SECS = 86_400
ERROR_BODY_BYTES = 1024

SUCCESS, RETRYABLE, NON_RETRYABLE = "success", "retryable", "non_retryable"


def nominal_delay_secs(strategy: str, delays: list[int], n: int) -> int:
    """Delay in seconds after attempt ``n`` (1-based) fails, without jitter (§5.4).

    ``custom`` uses ``delays[n-1]`` and, past the end of the list, its last value. Raises ``ValueError``
    for ``n < 1``, an unknown strategy, or ``custom`` with an empty list (validation forbids both).
    """
    if n < 1:
        raise ValueError(f"attempt number must be >= 1, got {n}")
    if strategy == "exponential":
        # 2^12 already exceeds the cap; clamping the exponent keeps huge n from building big ints.
        return min(2 ** min(n - 1, 12), MAX_EXPONENTIAL_DELAY_SECS)
    if strategy == "linear":
        return n
    if strategy == "fixed":
        return 1
    if strategy == "custom":
        if not delays:
            raise ValueError("custom retry strategy needs a non-empty delay list")
        return int(delays[min(n, len(delays)) - 1])
    raise ValueError(f"unknown retry strategy {strategy!r}")


def retry_delay_secs(strategy: str, delays: list[int], n: int, rng: random.Random | None = None) -> float:
    """Delay after attempt ``n`` fails: the nominal delay, times U[0.8, 1.2] for ``exponential`` only.

    ``Retry-After`` is not applied here: the caller takes ``max(delay, retry_after)`` (§5.4).
    """
    nominal = nominal_delay_secs(strategy, delays, n)
    if strategy != "exponential":
        return float(nominal)
    return nominal * (rng or random).uniform(JITTER_LOW, JITTER_HIGH)


def retry_summary(strategy: str, delays: list[int], max_attempts: int) -> tuple[int, int]:
    """``(retry_initial_delay_secs, retry_max_delay_secs)`` recorded on a new run (§4.6).

    The first is the nominal delay before attempt 2; the second the largest nominal delay any retry can
    get, i.e. over failures 1..max_attempts-1. Both are 0 when only one attempt is allowed.
    """
    if max_attempts <= 1:
        return 0, 0
    last_retry = max_attempts - 1  # the failure of attempt M schedules nothing
    initial = nominal_delay_secs(strategy, delays, 1)
    if strategy == "custom":
        # Past the end the list repeats its last value, which the slice already holds.
        largest = max(int(d) for d in delays[:last_retry]) if delays else initial
    else:
        # exponential, linear and fixed never decrease with n.
        largest = nominal_delay_secs(strategy, delays, last_retry)
    return initial, largest


def parse_retry_after(value: str | None, now: datetime) -> int | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), capped at 86 400.

    A date in the past means "now" (0). Missing, negative, fractional or unparseable values give
    ``None`` (no floor). Dates are rounded up so the server's floor is never undercut.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"  # more digits than the cap has is the cap (int() refuses 4,301)
        return MAX_RETRY_AFTER_SECS if len(digits) > len(str(MAX_RETRY_AFTER_SECS)) else min(int(digits),
                                                                                             MAX_RETRY_AFTER_SECS)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:  # pragma: no cover - older Pythons returned None instead of raising
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" means UTC with unknown origin
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    delta = (when - now).total_seconds()
    return min(max(0, math.ceil(delta)), MAX_RETRY_AFTER_SECS)


@dataclass(frozen=True)
class Outcome:
    """How one call (or attempt) ended (§5.3).

    ``kind`` is ``success``, ``retryable`` or ``non_retryable``; ``error_class`` and ``error`` are None on
    success; ``http_status`` is set whenever a response status line was read.
    """

    kind: str
    error_class: str | None = None
    error: str | None = None
    http_status: int | None = None

    @property
    def is_success(self) -> bool:
        return self.kind == SUCCESS

    @property
    def is_retryable(self) -> bool:
        return self.kind == RETRYABLE


def classify_status(status: int) -> tuple[str, str | None]:
    """``(kind, error_class)`` for a response status (§5.3).

    2xx success; 5xx, 408, 425 retryable ``server``; 429 retryable ``rate_limited``; other 4xx
    non-retryable ``client``; 1xx, 3xx and anything outside 100–599 non-retryable ``invalid_response``
    (redirects are never followed, so a 3xx is a misconfigured endpoint, not a transient state).
    """
    if 200 <= status <= 299:
        return SUCCESS, None
    if 500 <= status <= 599 or status in (408, 425):
        return RETRYABLE, "server"
    if status == 429:
        return RETRYABLE, "rate_limited"
    if 400 <= status <= 499:
        return NON_RETRYABLE, "client"
    return NON_RETRYABLE, "invalid_response"


def final_status_for(error_class: str | None) -> str:
    """Run status once retries are exhausted, by the last cause (§5.4).

    ``timeout`` → ``timed_out``; ``internal`` (only retryable when the worker was lost) → ``crashed``;
    anything else → ``failed``.
    """
    if error_class == "timeout":
        return "timed_out"
    if error_class == "internal":
        return "crashed"
    return "failed"


def http_error_text(status: int, body: bytes) -> str:
    """``HTTP <status>: <first 1 KiB of body>`` (§5.3).

    The cut never splits a UTF-8 sequence (a partial trailing character is dropped); invalid bytes
    inside the kept part become U+FFFD.
    """
    head = body[:ERROR_BODY_BYTES]
    # An incremental decoder holds back an incomplete trailing sequence instead of replacing it,
    # which is exactly "cut on a UTF-8 boundary". When nothing was cut, a dangling tail is invalid data.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(head, final=len(body) <= ERROR_BODY_BYTES)
    return f"HTTP {status}: {text}"


def combine_fallback(primary: Outcome, fallback: Outcome) -> Outcome:
    """The attempt's outcome when a fallback call followed a failed primary (§5.6).

    The fallback decides success and class; a failed fallback's error reads ``primary: <e1>; fallback: <e2>``.
    """
    if fallback.is_success:
        return fallback
    return Outcome(fallback.kind, fallback.error_class,
                   f"primary: {primary.error}; fallback: {fallback.error}", fallback.http_status)
