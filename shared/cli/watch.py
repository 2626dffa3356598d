"""``sluice runs watch``: follow a run's events until it ends (also ``jobs trigger --watch``, ``runs replay
--watch``).

Polls ``GET /v1/runs/{id}`` and then its events, printing each new event once, oldest first. The status is
read before the events, so when it is terminal every event up to the end has been printed. The exit code
says how it ended: 0 completed, 1 any other terminal status.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

from shared.cli import exit_codes
from shared.cli.api_client import ApiClient
from shared.cli.tables import show_duration, show_time
from shared.runs.status import TERMINAL, RunStatus

EVENTS_PAGE = 200


def watch_run(client: ApiClient, run_id: str, out: TextIO, *, as_json: bool, interval_secs: float,
              sleep: Callable[[float], None]) -> int:
    """Print events until the run is terminal; the exit code of how it ended."""
    seen: set[str] = set()
    while True:
        run = client.get(f"/v1/runs/{run_id}")
        for event in new_events(client, run_id, seen):
            print(json.dumps(event, ensure_ascii=False) if as_json else event_line(event), file=out, flush=True)
        if run["status"] in TERMINAL:
            if not as_json:
                print(ending_line(run), file=out, flush=True)
            return exit_codes.OK if run["status"] == RunStatus.COMPLETED else exit_codes.RUN_NOT_COMPLETED
        sleep(interval_secs)


def new_events(client: ApiClient, run_id: str, seen: set[str]) -> list[dict[str, Any]]:
    """The events not in ``seen`` (added to it), oldest first: pages are read newest first until one holds
    an event already seen."""
    fresh: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = client.page(f"/v1/runs/{run_id}/events", {"limit": EVENTS_PAGE, "cursor": cursor})
        unseen = [event for event in page.items if event["id"] not in seen]
        fresh += unseen
        if len(unseen) < len(page.items) or page.next_cursor is None:
            break
        cursor = page.next_cursor
    seen.update(event["id"] for event in fresh)
    return fresh[::-1]


def event_line(event: dict[str, Any]) -> str:
    return f"{show_time(event['created_at'])}  {event['type']:<16}  {describe(event)}".rstrip()


def describe(event: dict[str, Any]) -> str:
    """The event's data in a few words."""
    kind, data = event["type"], event.get("data") or {}
    if kind == "state_change":
        return f"{data.get('from') or 'created'} -> {data.get('to')}"
    if kind == "attempt_started":
        return f"attempt {data.get('attempt')} calls {data.get('endpoint_url')} (job version {data.get('job_version')})"
    if kind == "attempt_finished":
        secs = data["duration_ms"] / 1000 if isinstance(data.get("duration_ms"), int | float) else None
        http = f"HTTP {data['http_status']}" if data.get("http_status") is not None else "no response"
        text = f"attempt {data.get('attempt')} {data.get('outcome')}: {http} in {show_duration(secs)}"
        return text + (f" ({data['error']})" if data.get("error") else "")
    if kind == "retry_scheduled":
        return f"retry in {data.get('delay_secs')} s, at {show_time(data.get('next_retry_at'))}"
    if kind == "redelayed":
        return f"waits for {data.get('reason')} until {show_time(data.get('until'))}"
    if kind == "webhook_delivery":
        failure = data.get("error") or data.get("http_status")
        state = "delivered" if data.get("delivered") else f"not delivered ({failure})"
        return f"{data.get('event_type')} webhook {state}"
    return str(event.get("message") or json.dumps(data, ensure_ascii=False))


def ending_line(run: dict[str, Any]) -> str:
    text = f"run {run['id']} {run['status']} after {run.get('attempt', 0)} attempt(s)"
    return text + (f": {run['error']}" if run.get("error") else "")
