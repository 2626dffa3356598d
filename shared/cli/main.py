"""The ``sluice`` console script: one entry for every process role and admin command.

The roles come from ``shared.cli.roles``, the one module allowed to import the process packages. Before a
role, ``sluice db upgrade`` or ``sluice keys`` runs, PostgreSQL is reached once: a wrong or unreachable
``DATABASE_URL`` (or any malformed setting) stops the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from shared.cli.roles import RoleEntry, run_scheduler, run_worker, serve_api
from shared.config import Settings
from shared.db.engine import check_database
from shared.errors import ConfigError
from shared.logs import configure_logging

ROLES: dict[str, RoleEntry] = {"api": serve_api, "worker": run_worker, "scheduler": run_scheduler}
HELP = {"api": "serve the HTTP API", "worker": "run a worker (calls endpoints)",
        "scheduler": "run cron and maintenance loops",
        "dev": "everything at once on an embedded PostgreSQL and Redis"}


def run_dev(argv: list[str]) -> int:
    from shared.cli.dev import main as dev  # its servers' modules only when asked for

    return dev(argv)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Sluice HTTP job scheduler")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, help_text in HELP.items():
        sub.add_parser(command, help=help_text).add_argument("args", nargs=argparse.REMAINDER)
    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations up to the newest")
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--project", required=True)
    create.add_argument("--scopes", default="*", help="comma-separated scopes (default *)")
    create.add_argument("--name", default=None)
    listing = keys.add_parser("list", help="list keys (never the key itself)")
    listing.add_argument("--project", default=None)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"sluice: {exc.message}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    # A role parses its own options: argparse's REMAINDER rejects leading ones (``sluice worker --processes 2``).
    if argv and argv[0] in HELP:
        return _run_process(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command in HELP:
        return _run_process(args.command, list(args.args))
    settings = Settings.from_env()
    check_database(settings.database_url)
    if args.command == "db":
        from shared.db.migrate import upgrade

        # A JSON line like every process's (it runs as the Kubernetes init container and Compose service).
        configure_logging(settings, process="migrate")
        upgrade(settings.database_url)
        logging.getLogger("sluice.migrate").info("database is at the newest schema")
        return 0
    from shared.cli.keys import run_keys_command

    return run_keys_command(settings, args)


def _run_process(command: str, argv: list[str]) -> int:
    if command == "dev":
        return run_dev(argv)  # brings its own database
    if not {"-h", "--help"} & set(argv):
        check_database(Settings.from_env().database_url)
    return ROLES[command](argv)


if __name__ == "__main__":
    sys.exit(main())
