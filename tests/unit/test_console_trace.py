"""The run page's waterfall: each phase of an execution trace placed on one time axis."""

from __future__ import annotations

from api.console.trace import waterfall


def test_phases_follow_each_other_and_the_call_ends_with_the_dispatch():
    bars = {bar.field: bar for bar in waterfall({
        "queue_wait_ms": 100, "dequeue_ms": 20, "connect_ms": 5, "ttfb_ms": 60, "transfer_ms": 15,
        "dispatch_ms": 80, "total_ms": 110})}
    assert (bars["queue_wait_ms"].start_ms, bars["dequeue_ms"].start_ms, bars["dispatch_ms"].start_ms) == (0, 100, 120)
    assert bars["transfer_ms"].start_ms + 15 == 200 == bars["dispatch_ms"].start_ms + 80
    assert bars["ttfb_ms"].start_ms == 125 and bars["connect_ms"].start_ms == 120
    assert bars["total_ms"].start_ms == 100 and bars["total_ms"].left_pct + bars["total_ms"].width_pct == 100


def test_a_phase_that_did_not_happen_has_no_bar():
    bars = {bar.field: bar for bar in waterfall({
        "queue_wait_ms": 3, "dequeue_ms": 1, "connect_ms": None, "ttfb_ms": None, "transfer_ms": None,
        "dispatch_ms": None, "total_ms": 4})}
    assert bars["connect_ms"].ms is None and bars["connect_ms"].width_pct == 0
    assert bars["total_ms"].ms == 4


def test_no_trace_before_the_first_attempt():
    assert waterfall(None) == []
