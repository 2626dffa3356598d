"""Transaction-scoped locks that serialise racing writers on one logical key: ``pg_advisory_xact_lock`` on a
64-bit hash of the key, released at commit or rollback."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session


def lock_key(session: Session, *parts: str) -> None:
    """Block until this transaction holds the lock named by ``parts`` (e.g. ``"idem", job_id, key``)."""
    session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                    {"k": "\x1f".join(parts)})


def lock_keys(session: Session, keys: list[tuple[str, ...]]) -> None:
    """Take several locks in a stable order so two transactions never deadlock on them."""
    for parts in sorted(set(keys)):
        lock_key(session, *parts)
