"""``execution_trace`` of the latest attempt (CONTRACT §5.16): integer milliseconds per phase.

The worker notes monotonic instants as the attempt goes (picked, limits acquired, response complete,
outcome about to be recorded) and the call reports its own phases. ``queue_wait_ms`` is the one wall-clock
span: from ``queued_at`` (written by whichever process made the run ``queued``) to the pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from worker.call_result import CallTimings


def _ms(start: float | None, end: float | None) -> int | None:
    return None if start is None or end is None else max(0, round((end - start) * 1000))


@dataclass
class TraceClock:
    """Monotonic marks of one attempt; ``None`` until the phase happens."""

    picked: float
    picked_wall: datetime
    queued_at: datetime | None
    acquired: float | None = None
    responded: float | None = None

    def trace(self, timings: CallTimings | None, recorded: float) -> dict[str, Any]:
        queue_wait = None
        if self.queued_at is not None:
            queue_wait = max(0, round((self.picked_wall - self.queued_at).total_seconds() * 1000))
        return {
            "queue_wait_ms": queue_wait,
            "dequeue_ms": _ms(self.picked, self.acquired),
            "connect_ms": timings.connect_ms if timings else None,
            "ttfb_ms": timings.ttfb_ms if timings else None,
            "transfer_ms": timings.transfer_ms if timings else None,
            "dispatch_ms": _ms(self.acquired, self.responded),
            "total_ms": _ms(self.picked, recorded),
        }
