"""W3C ``traceparent``: which trigger headers a run takes, and the header of each attempt; pure."""

from __future__ import annotations

import re

import pytest

from shared.runs.trace_context import accepted_traceparent, attempt_traceparent, new_traceparent

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SHAPE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


@pytest.mark.parametrize("header", [VALID, f"  {VALID} ", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"])
def test_valid_headers_are_taken(header: str) -> None:
    assert accepted_traceparent(header) == header.strip()


def test_a_future_version_is_read_as_version_00() -> None:
    assert accepted_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future") == VALID


@pytest.mark.parametrize("header", [
    None, "", "garbage", VALID.upper(), VALID + "-extra",  # version 00 allows nothing after the flags
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
])
def test_invalid_headers_mean_a_new_trace(header: str | None) -> None:
    assert accepted_traceparent(header) is None


def test_new_traces_are_random_and_sampled() -> None:
    first, second = new_traceparent(), new_traceparent()
    assert SHAPE.match(first) and first.endswith("-01") and first.split("-")[1] != second.split("-")[1]
    assert accepted_traceparent(first) == first


def test_each_attempt_keeps_the_trace_and_flags_with_a_new_parent_id() -> None:
    attempts = {attempt_traceparent(VALID) for _ in range(5)}
    assert len(attempts) == 5
    for header in attempts:
        version, trace_id, parent_id, flags = header.split("-")
        assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
        assert parent_id != "00f067aa0ba902b7" and SHAPE.match(header)
    assert SHAPE.match(attempt_traceparent(None))  # a run from before: a trace of its own
