"""``sluice jobs list|get|trigger|enable|disable`` over the HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from shared.cli import exit_codes
from shared.cli.api_client import ApiClient, CommandFailure, add_target_options
from shared.cli.runs_command import add_watch_options
from shared.cli.tables import render_fields, render_table, show_json, show_time, show_value
from shared.cli.watch import watch_run
from shared.json_codec import MAX_DEPTH, nests_deeper

JOB_FIELDS = ("id", "slug", "name", "description", "enabled", "endpoint_url", "fallback_endpoint_url", "cron",
              "timezone", "execution_window_cron", "max_attempts", "retry_strategy", "timeout_secs",
              "max_concurrency", "max_concurrency_per_key", "rate_limit_max", "rate_limit_window_secs",
              "run_ttl_secs", "dedup_window_secs", "webhook_url", "tags", "version", "version_id")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    jobs = sub.add_parser("jobs", help="list, inspect, trigger, enable and disable jobs (HTTP API)",
                          description="Jobs over the HTTP API (SLUICE_URL, SLUICE_API_KEY).")
    commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="jobs, newest first", description="Jobs, newest first.")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--enabled", dest="enabled", action="store_const", const=True, help="only enabled jobs")
    state.add_argument("--disabled", dest="enabled", action="store_const", const=False, help="only disabled jobs")
    listing.add_argument("--tag", help="KEY or KEY=VALUE")
    listing.add_argument("--limit", type=int, default=50, help="how many (default 50, at most 200)")
    listing.add_argument("--cursor", help="the next page, as printed after a full page")
    listing.set_defaults(handler=list_jobs)
    get = commands.add_parser("get", help="one job: its configuration and health",
                              description="One job (id or slug): its configuration and its health over 7 days.")
    get.add_argument("job", help="id or slug")
    get.set_defaults(handler=get_job)
    trigger = commands.add_parser("trigger", help="start a run of a job",
                                  description="Start a run of a job (id or slug).")
    trigger.add_argument("job", help="id or slug")
    source = trigger.add_mutually_exclusive_group()
    source.add_argument("--payload", help="the payload as JSON (default {})")
    source.add_argument("--payload-file", metavar="PATH", help="read the JSON payload from PATH (- for stdin)")
    trigger.add_argument("--idempotency-key", help="a second trigger with this key returns the first run")
    trigger.add_argument("--priority", type=int, help="0..10, higher first (default 0)")
    trigger.add_argument("--delay", type=int, metavar="SECS", help="start no sooner than SECS from now")
    trigger.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a run tag (repeatable)")
    add_watch_options(trigger, flag=True)
    trigger.set_defaults(handler=trigger_job)
    for name, verb in (("enable", "enabled"), ("disable", "disabled")):
        toggle = commands.add_parser(name, help=f"mark jobs {verb}",
                                     description=f"Mark each job (id or slug) {verb}. "
                                                 "Nothing changes if one of them is not found.")
        toggle.add_argument("jobs", nargs="+", metavar="job")
        toggle.set_defaults(handler=toggle_jobs, enable=name == "enable")
    for parser in commands.choices.values():
        add_target_options(parser)


def list_jobs(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    tag_key, _, tag_value = (args.tag or "").partition("=")
    enabled = None if args.enabled is None else str(args.enabled).lower()
    page = client.page("/v1/jobs", {"enabled": enabled, "tag_key": tag_key or None, "tag_value": tag_value or None,
                                    "limit": args.limit, "cursor": args.cursor})
    if args.json:
        print(show_json(page.items), file=out)
    elif not page.items:
        print("no jobs", file=sys.stderr)
    else:
        rows = [(job["slug"], job["name"], "yes" if job["enabled"] else "no", _schedule(job), str(job["version"]),
                 job["endpoint_url"]) for job in page.items]
        print(render_table(("SLUG", "NAME", "ENABLED", "SCHEDULE", "VERSION", "ENDPOINT"), rows), file=out)
    if page.next_cursor:
        print(f"more: add --cursor {page.next_cursor}", file=sys.stderr)
    return exit_codes.OK


def _schedule(job: dict[str, Any]) -> str:
    return f"{job['cron']} ({job['timezone']})" if job.get("cron") else "-"


def get_job(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    job = client.get(f"/v1/jobs/{args.job}")
    health = client.get(f"/v1/jobs/{job['id']}/health")
    if args.json:
        print(show_json({**job, "health": health}), file=out)
        return exit_codes.OK
    pairs = [(name, show_value(job.get(name))) for name in JOB_FIELDS]
    pairs += [("updated_at", show_time(job.get("updated_at"))), ("health", _health(health))]
    print(render_fields(pairs), file=out)
    return exit_codes.OK


def _health(health: dict[str, Any]) -> str:
    if not health["total_runs"]:
        return f"no finished runs in {health['window']}"
    return (f"{health['health_score']} / 100 over {health['window']}: {health['total_runs']} runs, "
            f"{health['success_rate']} % completed, p95 {health['p95_duration_secs']} s")


def trigger_job(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {"payload": read_payload(args.payload, args.payload_file)}
    tags = dict(_pair(tag) for tag in args.tag)
    optional = {"idempotency_key": args.idempotency_key, "priority": args.priority, "delay_secs": args.delay,
                "tags": tags or None}
    body.update({name: value for name, value in optional.items() if value is not None})
    run = client.post(f"/v1/jobs/{args.job}/trigger", body)
    if args.json:
        print(json.dumps(run, ensure_ascii=False), file=out, flush=True)
    else:
        hit = " (an earlier run with this idempotency key)" if run.get("idempotency_hit") else ""
        print(f"run {run['id']} {run['status']}{hit}", file=out, flush=True)
    if not args.watch:
        return exit_codes.OK
    return watch_run(client, run["id"], out, as_json=args.json, interval_secs=args.interval, sleep=time.sleep)


def read_payload(text: str | None, path: str | None) -> Any:
    """The payload from ``--payload`` or ``--payload-file`` (``-``: stdin); ``{}`` without either."""
    where = "--payload"
    if path is not None:
        where = f"--payload-file {path}"
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as exc:
            raise CommandFailure(f"{where}: {exc.strerror}", exit_codes.USAGE) from None
    if text is None:
        return {}
    if nests_deeper(text):
        raise CommandFailure(f"{where}: nested deeper than {MAX_DEPTH} levels", exit_codes.USAGE)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandFailure(f"{where}: not JSON ({exc})", exit_codes.USAGE) from None


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CommandFailure(f"--tag: expected KEY=VALUE, got {text!r}", exit_codes.USAGE)
    return key, value


def toggle_jobs(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    jobs = []
    for ref in args.jobs:  # every job is found before any changes (the batch routes skip unknown ones)
        try:
            jobs.append(client.get(f"/v1/jobs/{ref}"))
        except CommandFailure as exc:
            raise CommandFailure(f"job {ref}: {exc.message}", exc.exit_code) from None
    verb = "enable" if args.enable else "disable"
    answer = client.post(f"/v1/jobs/batch-{verb}", {"ids": [job["id"] for job in jobs]})
    if args.json:
        print(json.dumps(answer), file=out)
    else:
        for job in jobs:
            print(f"job {job['slug']} {verb}d", file=out)
    return exit_codes.OK
