"""Output of the API commands for people: aligned tables, field lists, short times and durations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

EMPTY = "-"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def render_fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``name  value`` lines, names padded to the longest."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in pairs)


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def show_time(value: str | None) -> str:
    """``2025-03-01 09:00:00Z`` (UTC, to the second) from the API's RFC 3339 form."""
    moment = parse_time(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment else EMPTY


def show_duration(secs: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 m 05 s``, ``2 h 03 m``."""
    if secs is None:
        return EMPTY
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 60:
        return f"{secs:.1f} s"
    minutes, seconds = divmod(int(secs), 60)
    if minutes < 60:
        return f"{minutes} m {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


def run_duration(run: dict[str, Any], now: datetime) -> float | None:
    """The latest attempt's duration: to ``finished_at``, or to ``now`` while it executes."""
    started = parse_time(run.get("started_at"))
    if started is None:
        return None
    finished = parse_time(run.get("finished_at"))
    if finished is None and run.get("status") != "executing":
        return None
    return ((finished or now) - started).total_seconds()


def show_value(value: Any) -> str:
    """A field's value on one line: ``-`` for nothing, JSON for structures."""
    if value is None or value == {} or value == []:
        return EMPTY
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def show_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
