"""``sluice runs list|get|watch|cancel|replay`` over the HTTP API."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from shared.cli import exit_codes
from shared.cli.api_client import ApiClient, CommandFailure, Page, add_target_options
from shared.cli.tables import (
    render_fields,
    render_table,
    run_duration,
    show_duration,
    show_json,
    show_time,
    show_value,
)
from shared.cli.watch import event_line, new_events, watch_run

_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    runs = sub.add_parser("runs", help="list, inspect, follow, cancel and replay runs (HTTP API)",
                          description="Runs over the HTTP API (SLUICE_URL, SLUICE_API_KEY).")
    commands = runs.add_subparsers(dest="runs_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="runs, newest first", description="Runs, newest first.")
    add_run_filters(listing)
    get = commands.add_parser("get", help="one run: its fields, payload, result and events",
                              description="One run: its fields, payload, result, error and every event.")
    get.add_argument("run_id")
    get.set_defaults(handler=get_run)
    watch = commands.add_parser(
        "watch", help="print a run's events as they happen, until it ends",
        description="Print a run's events as they happen until it ends. Exit code 0 if it completed, "
                    "1 if it ended otherwise.")
    watch.add_argument("run_id")
    add_watch_options(watch, flag=False)
    watch.set_defaults(handler=watch_one)
    cancel = commands.add_parser("cancel", help="cancel runs that have not ended",
                                 description="Cancel each run (stops at the first failure).")
    cancel.add_argument("run_ids", nargs="+", metavar="run_id")
    cancel.set_defaults(handler=cancel_runs)
    replay = commands.add_parser("replay", help="start a new run with a finished run's payload",
                                 description="Start a new run of the job with the finished run's payload, "
                                             "metadata, tags and overrides.")
    replay.add_argument("run_id")
    add_watch_options(replay, flag=True)
    replay.set_defaults(handler=replay_run)
    for parser in (listing, get, watch, cancel, replay):
        add_target_options(parser)
    listing.set_defaults(handler=list_runs, path="/v1/runs")


def add_run_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--job", help="only this job's runs (id or slug)")
    parser.add_argument("--status", help="comma-separated statuses (e.g. failed,timed_out)")
    parser.add_argument("--triggered-by", choices=("manual", "cron", "replay"))
    parser.add_argument("--tag", help="KEY or KEY=VALUE")
    parser.add_argument("--batch", help="runs of one bulk trigger (its batch_id)")
    parser.add_argument("--since", help="created at or after: RFC 3339 time, or an age like 30m, 6h, 2d")
    parser.add_argument("--before", help="created before: RFC 3339 time, or an age like 30m, 6h, 2d")
    parser.add_argument("--limit", type=int, default=50, help="how many (default 50, at most 200)")
    parser.add_argument("--cursor", help="the next page, as printed after a full page")


def add_watch_options(parser: argparse.ArgumentParser, *, flag: bool) -> None:
    if flag:
        parser.add_argument("--watch", action="store_true",
                            help="then follow the run until it ends (exit code 0 completed, 1 otherwise)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECS",
                        help="seconds between two looks at the run while watching (default 1)")


def filter_params(args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    tag_key, _, tag_value = (args.tag or "").partition("=")
    return {"job_id": args.job, "status": args.status, "triggered_by": args.triggered_by,
            "tag_key": tag_key or None, "tag_value": tag_value or None, "batch_id": args.batch,
            "created_after": moment(args.since, now, "--since"), "created_before": moment(args.before, now, "--before"),
            "limit": args.limit, "cursor": args.cursor}


def moment(text: str | None, now: datetime, option: str) -> str | None:
    """An RFC 3339 time as given, or ``now`` minus an age (``30m``, ``6h``, ``2d``)."""
    if not text:
        return None
    age = _AGO.match(text.strip())
    if age:
        then = now - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
        return then.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandFailure(f"{option}: expected an RFC 3339 time (2025-03-01T09:00:00Z) or an age like 30m, 6h, 2d; "
                         f"got {text!r}", exit_codes.USAGE) from None
    return text


class JobNames:
    """Job ids shown as slugs, each looked up once (the id itself when the key may not read jobs)."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client
        self._slugs: dict[str, str] = {}

    def __call__(self, job_id: str) -> str:
        if job_id not in self._slugs:
            try:
                self._slugs[job_id] = self._client.get(f"/v1/jobs/{job_id}")["slug"]
            except CommandFailure:
                self._slugs[job_id] = job_id
        return self._slugs[job_id]


def print_runs(client: ApiClient, page: Page, args: argparse.Namespace, out: TextIO, *, columns: str) -> None:
    """A page of runs as JSON or a table (``columns``: ``runs`` or ``dlq``), and how to get the next one."""
    if args.json:
        print(show_json(page.items), file=out)
    elif not page.items:
        print("no runs", file=sys.stderr)
    else:
        names, now = JobNames(client), datetime.now(UTC)
        headers: tuple[str, ...]
        rows: list[tuple[str, ...]]
        if columns == "dlq":
            headers = ("ID", "JOB", "STATUS", "ATTEMPTS", "FINISHED", "ERROR")
            rows = [(r["id"], names(r["job_id"]), r["status"], str(r["attempt"]), show_time(r["finished_at"]),
                     _short(r.get("error"))) for r in page.items]
        else:
            headers = ("ID", "JOB", "STATUS", "ATTEMPT", "TRIGGER", "CREATED", "DURATION")
            rows = [(r["id"], names(r["job_id"]), r["status"], str(r["attempt"]), r["triggered_by"],
                     show_time(r["created_at"]), show_duration(run_duration(r, now))) for r in page.items]
        print(render_table(headers, rows), file=out)
    if page.next_cursor:
        print(f"more: add --cursor {page.next_cursor}", file=sys.stderr)


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def list_runs(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    page = client.page(args.path, filter_params(args, datetime.now(UTC)))
    print_runs(client, page, args, out, columns="dlq" if args.path.endswith("/dlq") else "runs")
    return exit_codes.OK


RUN_FIELDS = ("id", "status", "attempt", "triggered_by", "priority", "idempotency_key", "concurrency_key",
              "tags", "metadata", "batch_id", "continuation_of", "job_version", "created_by")
RUN_TIMES = ("created_at", "scheduled_at", "started_at", "finished_at", "next_retry_at", "expires_at")


def get_run(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    run = client.get(f"/v1/runs/{args.run_id}")
    events = new_events(client, args.run_id, set())
    if args.json:
        print(show_json({**run, "events": events[::-1]}), file=out)
        return exit_codes.OK
    pairs = [("job", JobNames(client)(run["job_id"]))] + [(name, show_value(run.get(name))) for name in RUN_FIELDS]
    pairs += [(name, show_time(run.get(name))) for name in RUN_TIMES]
    pairs += [("duration", show_duration(run_duration(run, datetime.now(UTC)))),
              ("error", show_value(run.get("error"))), ("error_class", show_value(run.get("error_class")))]
    print(render_fields(pairs), file=out)
    for title in ("payload", "result"):
        print(f"\n{title}:\n{json.dumps(run.get(title), indent=2, ensure_ascii=False)}", file=out)
    print("\nevents:", file=out)
    for event in events:
        print(f"  {event_line(event)}", file=out)
    return exit_codes.OK


def watch_one(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    return watch_run(client, args.run_id, out, as_json=args.json, interval_secs=args.interval, sleep=time.sleep)


def cancel_runs(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    for run_id in args.run_ids:
        try:
            run = client.post(f"/v1/runs/{run_id}/cancel")
        except CommandFailure as exc:
            raise CommandFailure(f"run {run_id}: {exc.message}", exc.exit_code) from None
        print(json.dumps(run, ensure_ascii=False) if args.json else f"run {run['id']} {run['status']}", file=out)
    return exit_codes.OK


def replay_run(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    run = client.post(f"/v1/runs/{args.run_id}/replay")
    print(json.dumps(run, ensure_ascii=False) if args.json
          else f"run {run['id']} {run['status']} (replay of {args.run_id})", file=out, flush=True)
    if not args.watch:
        return exit_codes.OK
    return watch_run(client, run["id"], out, as_json=args.json, interval_secs=args.interval, sleep=time.sleep)
