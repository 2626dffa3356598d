"""``sluice keys create|list|revoke``: API keys, directly in the database."""

from __future__ import annotations

import argparse
import sys

from shared.apikeys import create_key, list_keys, parse_scopes, revoke_key
from shared.clock import format_ts, utcnow
from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory, transaction
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
                print(f"{'id':36}  {'project':20}  {'prefix':8}  {'scopes':30}  {'created_at':27}  revoked_at")
                for key in list_keys(session, args.project):
                    print(f"{key.id:36}  {key.project_id:20}  {key.prefix:8}  {','.join(key.scopes):30}  "
                          f"{format_ts(key.created_at):27}  {format_ts(key.revoked_at) or '-'}")
            else:
                key = revoke_key(session, args.key_id, utcnow())
                print(f"revoked {key.id} at {format_ts(key.revoked_at)}")
    except SluiceError as exc:
        print(f"sluice: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0
