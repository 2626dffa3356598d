"""Structured logs: one JSON object per line, per event, with run_id / job_id / request_id when known.

Use ``log.info("run completed", extra={"run_id": ..., "job_id": ...})``; extras become top-level keys.
Never log secrets, Authorization headers, payloads or results (CONTRACT §10.2).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from shared.config import Settings

_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process_role = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": self.process_role,
            "event": record.getMessage(),
        }
        entry.update(record_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, in the order they were given."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


# The plain format's first fields, in this order and under these names; the other extras follow as given.
_LEADING = {"run_id": "run", "job_id": "job", "status": "status", "attempt": "attempt", "duration_ms": "duration"}


class PlainFormatter(logging.Formatter):
    """One line for people (``SLUICE_LOG_JSON=false``, the default of ``sluice dev``): time, process, level,
    event, then the fields as ``name=value`` (run, job, status, attempt and duration first; empty ones left
    out), e.g. ``12:00:01.250 worker INFO attempt finished run=0190… job=0190… status=completed attempt=1
    duration=12ms outcome=success http_status=200``."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process_role = process

    def format(self, record: logging.LogRecord) -> str:
        extras = record_extras(record)
        fields = [(_LEADING[name], extras.pop(name)) for name in _LEADING if name in extras]
        fields += list(extras.items())
        shown = " ".join(f"{name}={_plain(name, value)}" for name, value in fields if value is not None)
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        line = f"{moment} {self.process_role} {record.levelname} {record.getMessage()}"
        line = f"{line} {shown}" if shown else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _plain(name: str, value: Any) -> str:
    if name == "duration":
        return f"{value}ms"
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False,
                                                           separators=(",", ":"))
    return json.dumps(text, ensure_ascii=False) if (" " in text or not text) else text


def configure_logging(settings: Settings, *, process: str) -> None:
    """Route every logger to stderr, as JSON lines unless SLUICE_LOG_JSON=false (then ``PlainFormatter``)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(PlainFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    for noisy in ("urllib3", "werkzeug", "apscheduler", "dramatiq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
