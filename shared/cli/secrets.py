"""``sluice secrets generate-key|reencrypt``: the key webhook secrets are sealed with, and its rotation.

Rotation: put a new key first in ``SLUICE_SECRET_KEY`` (or the key file) and keep the old one after it,
restart the API and the workers, run ``sluice secrets reencrypt``, then drop the old key.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.engine import make_engine, make_session_factory, transaction
from shared.jobs.secrets import reseal_jobs, reseal_versions
from shared.webhooks.sealing import SecretBox, generate_key

PAGE = 500

Reseal = Callable[..., tuple[str | None, int]]


def run_secrets_command(settings: Settings | None, args: argparse.Namespace) -> int:
    if args.secrets_command == "generate-key":
        print(generate_key())
        return 0
    assert settings is not None
    box = settings.secret_box
    engine = make_engine(settings.database_url, single_use=True)
    factory = make_session_factory(engine)
    try:
        jobs = _reseal_all(factory, box, reseal_jobs)
        versions = _reseal_all(factory, box, reseal_versions)
    finally:
        engine.dispose()
    print(f"re-encrypted with the current key: {jobs} jobs, {versions} version snapshots "
          "(the others already were)")
    return 0


def _reseal_all(factory: Callable[[], Session], box: SecretBox, reseal: Reseal) -> int:
    """Every row, one transaction per page; returns how many changed."""
    after: str | None = ""
    total = 0
    while after is not None:
        with transaction(factory) as session:  # type: ignore[arg-type]
            after, changed = reseal(session, box, after=after, limit=PAGE)
        total += changed
    return total
