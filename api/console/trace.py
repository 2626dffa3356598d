"""An execution trace drawn as a waterfall: each phase of the latest attempt as a bar on one time axis.

The trace gives durations only; their order is fixed by what each measures: the queue wait, then the
dequeue (limits), then the dispatch (the calls), whose last call ends with connect → time to first byte →
transfer; ``total`` runs from the pick (the queue wait's end) to the recorded outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LABELS = {
    "queue_wait_ms": "queue wait", "dequeue_ms": "dequeue (limits)", "dispatch_ms": "dispatch",
    "connect_ms": "connect", "ttfb_ms": "time to first byte", "transfer_ms": "transfer", "total_ms": "total",
}


@dataclass(frozen=True)
class Bar:
    field: str
    label: str
    start_ms: int
    ms: int | None
    left_pct: float = 0.0
    width_pct: float = 0.0


def waterfall(trace: dict[str, Any] | None) -> list[Bar]:
    """The bars of ``trace`` (a run's ``execution_trace``); a phase that did not happen has ``ms`` None."""
    if not trace:
        return []

    def ms(name: str) -> int:
        value = trace.get(name)
        return int(value) if isinstance(value, int | float) else 0

    picked = ms("queue_wait_ms")
    acquired = picked + ms("dequeue_ms")
    called = acquired + ms("dispatch_ms")
    transfer_at = called - ms("transfer_ms")
    ttfb_at = transfer_at - ms("ttfb_ms")
    starts = {"queue_wait_ms": 0, "dequeue_ms": picked, "dispatch_ms": acquired,
              "connect_ms": ttfb_at - ms("connect_ms"), "ttfb_ms": ttfb_at, "transfer_ms": transfer_at,
              "total_ms": picked}
    span = max(picked + ms("total_ms"), called, 1)
    bars = []
    for name, label in LABELS.items():
        present = isinstance(trace.get(name), int | float)
        start = max(starts[name], 0)
        bars.append(Bar(name, label, start, ms(name) if present else None,
                        left_pct=round(100 * start / span, 2),
                        width_pct=round(max(100 * ms(name) / span, 0.4), 2) if present else 0.0))
    return bars
