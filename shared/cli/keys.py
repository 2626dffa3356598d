"""``sluice keys create|list|revoke``: API keys, directly in the database."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from shared.apikeys import create_key, list_keys, parse_scopes, revoke_key
from shared.clock import format_ts, utcnow
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory, transaction
from shared.db.models import ApiKey
from shared.errors import SluiceError


def run_keys_command(settings: Settings, args: argparse.Namespace) -> int:
    engine = make_engine(settings.database_url, single_use=True)
    factory = make_session_factory(engine)
    try:
        with transaction(factory) as session:
            if args.keys_command == "create":
                key, plaintext = create_key(session, project_id=args.project, scopes=parse_scopes(args.scopes),
                                            name=args.name, now=utcnow())
                print(plaintext)
                print(f"key id {key.id} · project {key.project_id} · scopes {','.join(key.scopes)}"
                      " · shown once: store it now", file=sys.stderr)
            elif args.keys_command == "list":
                print_key_table(list_keys(session, args.project))
            else:
                key = revoke_key(session, args.key_id, utcnow())
                print(f"revoked {key.id} at {format_ts(key.revoked_at)}")
    except SluiceError as exc:
        print(f"sluice: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


LIST_COLUMNS = (("id", 36), ("project", 20), ("name", 20), ("prefix", 8), ("scopes", 30), ("created_at", 27),
                ("last_used_at", 27), ("revoked_at", 0))


def print_key_table(keys: Iterable[ApiKey]) -> None:
    """Every column of the listed keys but the key and its hash; ``-`` for an unset one. ``last_used_at``
    is advisory: it is written at most once a minute per key."""
    print("  ".join(f"{title:{width}}" for title, width in LIST_COLUMNS).rstrip())
    for key in keys:
        cells = (key.id, key.project_id, key.name or "-", key.prefix, ",".join(key.scopes),
                 format_ts(key.created_at), format_ts(key.last_used_at) or "-", format_ts(key.revoked_at) or "-")
        print("  ".join(f"{cell:{width}}" for cell, (_, width) in zip(cells, LIST_COLUMNS, strict=True)).rstrip())
