"""What the API commands print for people: aligned tables, short durations and times, ages for --since."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.cli import exit_codes
from shared.cli.api_client import CommandFailure
from shared.cli.runs_command import moment
from shared.cli.tables import render_table, run_duration, show_duration, show_time
from shared.cli.watch import describe

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_columns_are_aligned_and_lines_not_padded() -> None:
    table = render_table(("ID", "STATUS", "ERROR"), [("a", "completed", "-"), ("bbbb", "failed", "HTTP 500")])
    assert table.splitlines() == ["ID    STATUS     ERROR", "a     completed  -", "bbbb  failed     HTTP 500"]


@pytest.mark.parametrize(("secs", "shown"), [(None, "-"), (0.0123, "12 ms"), (12.34, "12.3 s"), (245, "4 m 05 s"),
                                             (7380, "2 h 03 m")])
def test_durations(secs: float | None, shown: str) -> None:
    assert show_duration(secs) == shown


def test_a_run_lasts_from_its_start_to_its_end_or_to_now_while_executing() -> None:
    started = {"started_at": "2026-03-01T11:59:58.000000Z"}
    assert run_duration({**started, "status": "executing", "finished_at": None}, NOW) == 2.0
    assert run_duration({**started, "status": "completed", "finished_at": "2026-03-01T11:59:58.500000Z"}, NOW) == 0.5
    assert run_duration({**started, "status": "delayed", "finished_at": None}, NOW) is None  # a retry waits
    assert show_time("2026-03-01T09:00:00.123456Z") == "2026-03-01 09:00:00Z"


def test_since_takes_an_age_or_a_time() -> None:
    assert moment("90m", NOW, "--since") == "2026-03-01T10:30:00.000000Z"
    assert moment("2d", NOW, "--since") == "2026-02-27T12:00:00.000000Z"
    assert moment("2026-02-01T00:00:00Z", NOW, "--since") == "2026-02-01T00:00:00Z"
    with pytest.raises(CommandFailure) as caught:
        moment("yesterday", NOW, "--since")
    assert caught.value.exit_code == exit_codes.USAGE and caught.value.message.startswith("--since: expected")


def test_events_in_a_few_words() -> None:
    finished = {"type": "attempt_finished", "data": {"attempt": 2, "outcome": "retryable", "http_status": 503,
                                                     "duration_ms": 1500, "error": "HTTP 503"}}
    assert describe(finished) == "attempt 2 retryable: HTTP 503 in 1.5 s (HTTP 503)"
    assert describe({"type": "state_change", "data": {"from": None, "to": "queued"}}) == "created -> queued"
    assert describe({"type": "held", "data": {}, "message": "job disabled"}) == "job disabled"
