"""``sluice dlq list|replay``: the runs that ended in failure (``failed``, ``timed_out``, ``crashed``,
``system_failed``) over the HTTP API. The dead-letter list is a view: a replayed run stays in it."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from shared.cli import exit_codes
from shared.cli.api_client import ApiClient, add_target_options
from shared.cli.runs_command import add_run_filters, list_runs
from shared.cli.tables import render_table

BULK_MAX = 100  # run ids per bulk-replay request


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dlq = sub.add_parser("dlq", help="dead letters: runs that ended in failure (HTTP API)",
                         description="Runs that ended failed, timed_out, crashed or system_failed, over the HTTP "
                                     "API (SLUICE_URL, SLUICE_API_KEY).")
    commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="dead letters, newest first",
                                  description="Dead letters, newest first (--status narrows within the four "
                                              "failure statuses).")
    add_run_filters(listing)
    listing.set_defaults(handler=list_runs, path="/v1/runs/dlq")
    replay = commands.add_parser(
        "replay", help="start new runs with dead letters' payloads",
        description="Replay each run: a new run of its job with the same payload. Exit code 0 if every run "
                    "was replayed, 3 if one was not found, 6 if one was skipped (not finished, or its job "
                    "is disabled).")
    replay.add_argument("run_ids", nargs="+", metavar="run_id")
    replay.set_defaults(handler=replay_runs)
    for parser in (listing, replay):
        add_target_options(parser)


def replay_runs(client: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    results = []
    for start in range(0, len(args.run_ids), BULK_MAX):
        answer = client.post("/v1/runs/bulk-replay", {"run_ids": args.run_ids[start:start + BULK_MAX]})
        results += answer["results"]
    if args.json:
        print(json.dumps(results, ensure_ascii=False), file=out)
    else:
        rows = [(r["original_run_id"], r["new_run_id"] or "-", r["status"], r["error"] or "-") for r in results]
        print(render_table(("RUN", "NEW RUN", "STATUS", "ERROR"), rows), file=out)
    statuses = {r["status"] for r in results}
    if "not_found" in statuses:
        return exit_codes.NOT_FOUND
    return exit_codes.REFUSED if "skipped" in statuses else exit_codes.OK
