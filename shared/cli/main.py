"""The ``sluice`` console script: one entry for every process role, the admin commands and the API commands.

- Process roles (``api``, ``worker``, ``scheduler``) come from ``shared.cli.roles``, the one module allowed
  to import the process packages; ``dev`` from ``shared.cli.dev``. Each parses its own options, so its
  ``--help`` is its own and starts nothing.
- ``db upgrade`` and ``keys`` work on PostgreSQL directly; ``jobs``, ``runs`` and ``dlq`` call the HTTP API
  (``shared.cli.api_client``).

Before a role or ``keys`` runs, PostgreSQL is reached once and its schema compared with this release's
migrations, and a role pings Redis (``shared.cli.startup``): a missing or malformed setting, an unreachable
server or a schema behind the code stops the command with one line on stderr and exit code 2. Exit codes:
``shared.cli.exit_codes`` (docs/cli.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from shared.cli import dlq_command, exit_codes, jobs_command, runs_command
from shared.cli.api_client import ApiClient, ApiTarget, CommandFailure, package_version
from shared.cli.roles import RoleEntry, run_scheduler, run_worker, serve_api
from shared.cli.startup import check_redis, check_serving_database
from shared.config import Settings
from shared.db.engine import check_database
from shared.errors import ConfigError
from shared.logs import configure_logging

ROLES: dict[str, RoleEntry] = {"api": serve_api, "worker": run_worker, "scheduler": run_scheduler}
HELP = {"api": "serve the HTTP API", "worker": "run a worker (calls endpoints)",
        "scheduler": "run cron and maintenance loops",
        "dev": "everything at once on an embedded PostgreSQL and Redis"}
HELP_FLAGS = frozenset({"-h", "--help"})


def run_dev(argv: list[str]) -> int:
    from shared.cli.dev import main as dev  # its servers' modules only when asked for

    return dev(argv)


def parser() -> argparse.ArgumentParser:
    """The whole command tree (a role's own options are parsed by the role)."""
    top = argparse.ArgumentParser(prog="sluice", description="Sluice: a self-hosted HTTP job scheduler.",
                                  epilog="`sluice COMMAND --help` tells more. Exit codes: docs/cli.md.")
    top.add_argument("--version", action="version", version=f"sluice {package_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, help_text in HELP.items():
        sub.add_parser(command, help=help_text, add_help=False).add_argument("args", nargs=argparse.REMAINDER)
    db = sub.add_parser("db", help="database schema", description="The database schema.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_commands.add_parser("upgrade", help="apply migrations up to the newest",
                           description="Apply the migrations up to this release's newest (DATABASE_URL).")
    keys = sub.add_parser("keys", help="API keys", description="API keys, in the database (DATABASE_URL).")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = key_commands.add_parser("create", help="create a key and print it once",
                                     description="Create a key and print it once.")
    create.add_argument("--project", required=True)
    create.add_argument("--scopes", default="*", help="comma-separated scopes (default *)")
    create.add_argument("--name", default=None)
    listing = key_commands.add_parser("list", help="list keys (never the key itself)",
                                      description="List keys (never the key itself).")
    listing.add_argument("--project", default=None)
    revoke = key_commands.add_parser("revoke", help="revoke a key by id", description="Revoke a key by id.")
    revoke.add_argument("key_id")
    secrets = sub.add_parser("secrets", help="the key webhook secrets are encrypted with",
                             description="The key webhook secrets are encrypted with (SLUICE_SECRET_KEY).")
    secret_commands = secrets.add_subparsers(dest="secrets_command", required=True, metavar="COMMAND")
    secret_commands.add_parser("generate-key", help="print a new random key for SLUICE_SECRET_KEY",
                               description="Print a new random key for SLUICE_SECRET_KEY (needs no database).")
    secret_commands.add_parser("reencrypt", help="encrypt every stored webhook secret with the first key (after "
                                                 "a key rotation, or for secrets stored before encryption)",
                               description="Encrypt every stored webhook secret with the first key.")
    for module in (jobs_command, runs_command, dlq_command):
        module.add_commands(sub)
    return top


def command_paths(node: argparse.ArgumentParser | None = None,
                  prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and subcommand, as argument tuples (``("runs", "watch")``), the top level first."""
    node = node or parser()
    yield prefix
    for action in node._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from command_paths(child, (*prefix, name))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"sluice: {exc.message}", file=sys.stderr)
        return exit_codes.USAGE
    except CommandFailure as exc:
        print(f"sluice: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return exit_codes.INTERRUPTED


def _run(argv: list[str]) -> int:
    # A role parses its own options: argparse's REMAINDER rejects leading ones (``sluice worker --processes 2``).
    if argv and argv[0] in HELP:
        return _run_process(argv[0], argv[1:])
    args = parser().parse_args(argv)
    if hasattr(args, "handler"):
        client = ApiClient(ApiTarget.resolve(args, os.environ, Path.cwd()))
        try:
            return int(args.handler(client, args, sys.stdout))
        finally:
            client.close()
    from shared.cli.secrets import run_secrets_command

    if args.command == "secrets" and args.secrets_command == "generate-key":
        return run_secrets_command(None, args)  # needs no setting, no database
    settings = Settings.from_env()
    if args.command == "db":
        check_database(settings.database_url)
        from shared.db.migrate import upgrade

        # A JSON line like every process's (it runs as the Kubernetes init container and Compose service).
        configure_logging(settings, process="migrate")
        upgrade(settings.database_url, secret_keys=settings.secret_keys)
        logging.getLogger("sluice.migrate").info("database is at the newest schema")
        return exit_codes.OK
    check_serving_database(settings)
    if args.command == "secrets":
        return run_secrets_command(settings, args)
    from shared.cli.keys import run_keys_command

    return run_keys_command(settings, args)


def _run_process(command: str, argv: list[str]) -> int:
    if command == "dev":
        return run_dev(argv)  # brings its own database
    if not HELP_FLAGS & set(argv):
        settings = Settings.from_env()
        check_serving_database(settings)
        check_redis(settings.redis_url)
    return ROLES[command](argv)


if __name__ == "__main__":
    sys.exit(main())
