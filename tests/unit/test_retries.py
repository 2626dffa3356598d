"""Retry delays, summaries, Retry-After parsing and status classification (CONTRACT §5.3, §5.4, §4.6)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from shared.runs.retries import (
    Outcome,
    classify_status,
    combine_fallback,
    final_status_for,
    http_error_text,
    nominal_delay_secs,
    parse_retry_after,
    retry_delay_secs,
    retry_summary,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (2, 2), (3, 4), (10, 512), (12, 2048), (13, 3600),
                                             (100, 3600), (10**6, 3600)])
def test_exponential_nominal_doubles_and_caps_at_an_hour(n: int, expected: int) -> None:
    assert nominal_delay_secs("exponential", [], n) == expected


def test_linear_fixed_and_custom_nominal() -> None:
    assert [nominal_delay_secs("linear", [], n) for n in (1, 2, 7)] == [1, 2, 7]
    assert [nominal_delay_secs("fixed", [], n) for n in (1, 2, 7)] == [1, 1, 1]
    assert [nominal_delay_secs("custom", [5, 30, 60], n) for n in (1, 2, 3, 4, 50)] == [5, 30, 60, 60, 60]


def test_nominal_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        nominal_delay_secs("exponential", [], 0)
    with pytest.raises(ValueError):
        nominal_delay_secs("fibonacci", [], 1)
    with pytest.raises(ValueError):
        nominal_delay_secs("custom", [], 1)


def test_only_exponential_is_jittered_within_twenty_percent() -> None:
    rng = random.Random(42)
    samples = [retry_delay_secs("exponential", [], 3, rng) for _ in range(2000)]
    assert all(3.2 <= s <= 4.8 for s in samples)
    assert max(samples) - min(samples) > 1.0  # really random, not a constant factor
    capped = [retry_delay_secs("exponential", [], 40, rng) for _ in range(200)]
    assert all(2880 <= s <= 4320 for s in capped)
    assert retry_delay_secs("linear", [], 3, rng) == 3.0
    assert retry_delay_secs("fixed", [], 3, rng) == 1.0
    assert retry_delay_secs("custom", [9, 2], 3, rng) == 2.0


def test_jitter_uses_the_module_random_without_rng() -> None:
    assert 0.8 <= retry_delay_secs("exponential", [], 1) <= 1.2


@pytest.mark.parametrize(("strategy", "delays", "max_attempts", "expected"), [
    ("exponential", [], 1, (0, 0)),
    ("linear", [], 1, (0, 0)),
    ("custom", [7], 1, (0, 0)),
    ("exponential", [], 2, (1, 1)),
    ("exponential", [], 3, (1, 2)),
    ("exponential", [], 5, (1, 8)),
    ("exponential", [], 100, (1, 3600)),
    ("linear", [], 4, (1, 3)),
    ("fixed", [], 10, (1, 1)),
    ("custom", [10, 300, 5], 2, (10, 10)),
    ("custom", [10, 300, 5], 3, (10, 300)),
    ("custom", [10, 300, 5], 100, (10, 300)),
    ("custom", [60, 5], 50, (60, 60)),
])
def test_retry_summary(strategy: str, delays: list[int], max_attempts: int, expected: tuple[int, int]) -> None:
    assert retry_summary(strategy, delays, max_attempts) == expected


def test_retry_summary_matches_brute_force() -> None:
    for strategy, delays in [("exponential", []), ("linear", []), ("fixed", []), ("custom", [3, 1, 8, 2])]:
        for m in range(2, 30):
            nominal = [nominal_delay_secs(strategy, delays, n) for n in range(1, m)]
            assert retry_summary(strategy, delays, m) == (nominal[0], max(nominal))


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("   ", None), ("abc", None), ("-5", None), ("1.5", None), ("+3", None),
    ("0", 0), ("120", 120), (" 30 ", 30), ("86400", 86400), ("86401", 86400), ("9" * 40, 86400),
    ("٣", None),  # a non-ASCII digit is not delta-seconds
    ("9" * 5000, 86400),  # beyond the digits int() reads: still the cap, not an error
    ("000120", 120), ("0" * 5000 + "7", 7), ("0" * 5000, 0), ("0" + "1" * 5, 11111), ("0" + "9" * 6, 86400),
])
def test_retry_after_seconds(value: str | None, expected: int | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date() -> None:
    assert parse_retry_after(format_datetime(NOW + timedelta(seconds=90), usegmt=True), NOW) == 90
    assert parse_retry_after("Wed, 01 May 2024 12:01:00 GMT", NOW) == 60
    assert parse_retry_after("Wed, 01 May 2024 12:00:00 GMT", NOW - timedelta(milliseconds=300)) == 1
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", NOW) == 0  # in the past: retry now
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", NOW) == 86400
    assert parse_retry_after("Wed, 01 May 2024 12:01:00 -0000", NOW) == 60
    assert parse_retry_after("Wed, 32 May 2024 12:01:00 GMT", NOW) is None


@pytest.mark.parametrize(("status", "expected"), [
    (200, ("success", None)), (201, ("success", None)), (204, ("success", None)), (299, ("success", None)),
    (500, ("retryable", "server")), (502, ("retryable", "server")), (503, ("retryable", "server")),
    (599, ("retryable", "server")), (408, ("retryable", "server")), (425, ("retryable", "server")),
    (429, ("retryable", "rate_limited")),
    (400, ("non_retryable", "client")), (404, ("non_retryable", "client")), (499, ("non_retryable", "client")),
    (100, ("non_retryable", "invalid_response")), (101, ("non_retryable", "invalid_response")),
    (301, ("non_retryable", "invalid_response")), (302, ("non_retryable", "invalid_response")),
    (304, ("non_retryable", "invalid_response")), (0, ("non_retryable", "invalid_response")),
    (99, ("non_retryable", "invalid_response")), (600, ("non_retryable", "invalid_response")),
    (999, ("non_retryable", "invalid_response")),
])
def test_classify_status(status: int, expected: tuple[str, str | None]) -> None:
    assert classify_status(status) == expected


@pytest.mark.parametrize(("error_class", "expected"), [
    ("timeout", "timed_out"), ("internal", "crashed"), ("server", "failed"), ("connection", "failed"),
    ("rate_limited", "failed"), ("client", "failed"), (None, "failed"),
])
def test_final_status_for(error_class: str | None, expected: str) -> None:
    assert final_status_for(error_class) == expected


def test_http_error_text_keeps_short_bodies() -> None:
    assert http_error_text(500, b'{"error":"boom"}') == 'HTTP 500: {"error":"boom"}'
    assert http_error_text(404, b"") == "HTTP 404: "


def test_http_error_text_caps_at_one_kib() -> None:
    assert http_error_text(502, b"x" * 5000) == "HTTP 502: " + "x" * 1024


def test_http_error_text_cuts_on_a_utf8_boundary() -> None:
    body = b"a" * 1023 + "é".encode() + b"tail"  # the 2-byte é straddles byte 1024
    assert http_error_text(500, body) == "HTTP 500: " + "a" * 1023
    body = b"a" * 1022 + "€".encode()  # 3 bytes, only 2 within the cut
    assert http_error_text(500, body + b"more") == "HTTP 500: " + "a" * 1022
    body = b"a" * 1021 + "€".encode() + b"z"  # fits exactly
    assert http_error_text(500, body) == "HTTP 500: " + "a" * 1021 + "€"


def test_http_error_text_replaces_invalid_bytes() -> None:
    assert http_error_text(500, b"ok\xff\xfeok") == "HTTP 500: ok\ufffd\ufffdok"
    assert http_error_text(500, b"end\xe2\x82") == "HTTP 500: end\ufffd"  # truncated char, nothing cut


def test_outcome_predicates_and_fallback_combination() -> None:
    primary = Outcome("retryable", "server", "HTTP 503: down", 503)
    ok = Outcome("success", http_status=200)
    assert ok.is_success and not ok.is_retryable and primary.is_retryable
    assert combine_fallback(primary, ok) is ok
    failed = Outcome("non_retryable", "client", "HTTP 404: ", 404)
    combined = combine_fallback(primary, failed)
    assert combined == Outcome("non_retryable", "client", "primary: HTTP 503: down; fallback: HTTP 404: ", 404)
