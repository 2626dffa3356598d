"""The ``sluice`` console script: one entry for every role.

Process roles live in ``api``, ``worker`` and ``scheduler``, which ``shared`` must not import; they are
resolved by name at run time, exactly as console-script entry points are.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from shared.config import Settings

ROLES = {
    "api": "api.server:main",
    "worker": "worker.main:main",
    "scheduler": "scheduler.main:main",
    "dev": "shared.cli.dev:main",
}


def _run_role(role: str, argv: list[str]) -> int:
    module_name, _, func = ROLES[role].partition(":")
    entry = getattr(importlib.import_module(module_name), func)
    return int(entry(argv) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Sluice HTTP job scheduler")
    sub = parser.add_subparsers(dest="command", required=True)
    for role, help_text in (("api", "serve the HTTP API"), ("worker", "run a worker (calls endpoints)"),
                            ("scheduler", "run cron and maintenance loops"),
                            ("dev", "everything at once on an embedded default")):
        p = sub.add_parser(role, help=help_text)
        p.add_argument("args", nargs=argparse.REMAINDER)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROLES:
        # A role parses its own options: argparse's REMAINDER rejects leading ones (``sluice worker --processes 2``).
        return _run_role(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    if args.command in ROLES:
        return _run_role(args.command, list(args.args))
    settings = Settings.from_env()
    if args.command == "db":
        from shared.db.migrate import upgrade

        upgrade(settings.database_url)
        print("database is at the newest schema")
        return 0
    from shared.cli.keys import run_keys_command

    return run_keys_command(settings, args)


if __name__ == "__main__":
    sys.exit(main())
