"""Transaction-scoped locks that serialise racing writers on one logical key: ``pg_advisory_xact_lock`` on a
64-bit hash of the key, released at commit or rollback.

Per-value keys (an idempotency key, a payload hash) are striped: a value is covered by one of
``STRIPES`` locks of its kind and scope (``striped``), so a request naming a thousand values takes at most
``STRIPES`` locks, in one statement (``lock_all``), instead of a thousand round trips filling PostgreSQL's
shared lock table. Two writers of the same value still meet on the same lock; writers of different values
share one with probability 1/``STRIPES``, for the length of a short transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

STRIPES = 16
_SEPARATOR = "\x1f"
# Taken in the order of their names, so that two requests locking overlapping sets never deadlock.
_LOCK_ALL = sa.text("SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) "
                    "FROM (SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k COLLATE \"C\") AS ordered")


def lock_key(session: Session, *parts: str) -> None:
    """Block until this transaction holds the lock named by ``parts`` (e.g. ``"deps", job_id``)."""
    session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": _SEPARATOR.join(parts)})


def striped(kind: str, scope: str, value: str) -> tuple[str, str, str]:
    """The name of the lock covering ``value`` among the ``STRIPES`` locks of ``kind`` in ``scope``."""
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return kind, scope, str(int.from_bytes(digest, "big") % STRIPES)


def lock_all(session: Session, keys: Iterable[tuple[str, ...]]) -> None:
    """Take every named lock in one statement, in a stable order."""
    names = sorted({_SEPARATOR.join(parts) for parts in keys})
    if names:
        session.execute(_LOCK_ALL, {"keys": names})
