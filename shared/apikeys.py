"""API keys (CONTRACT §9): ``sk_`` + 64 hex, stored only as a SHA-256 digest, one project per key."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.db.prepared import PreparedQuery
from shared.errors import NotFound, ValidationFailed
from shared.ids import uuid7

SCOPES = ("jobs:read", "jobs:write", "jobs:trigger", "runs:read", "runs:write")
ALL_SCOPES = "*"
PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
KEY_RE = re.compile(r"^sk_[0-9a-f]{64}$")
# last_used_at is advisory; writing it on every request would double the cost of reads.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key id, its project and scopes."""

    key_id: str
    project_id: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        return f"apikey:{self.key_id}"

    def has_scope(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def parse_scopes(raw: str | None) -> list[str]:
    if raw is None or raw.strip() in ("", ALL_SCOPES):
        return [ALL_SCOPES]
    scopes = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in SCOPES and s != ALL_SCOPES]
    if unknown:
        raise ValidationFailed({"scopes": [f"unknown scope {s!r}" for s in unknown]},
                               f"unknown scope(s): {', '.join(unknown)}; known: {', '.join(SCOPES)}, *")
    return sorted(set(scopes))


def create_key(session: Session, *, project_id: str, scopes: list[str], name: str | None,
               now: datetime) -> tuple[ApiKey, str]:
    """Store a new key and return it with its plaintext (shown once, never stored)."""
    if not PROJECT_ID_RE.fullmatch(project_id):
        raise ValidationFailed({"project": ["1..128 characters from [A-Za-z0-9_.:-]"]}, "invalid project id")
    plaintext = "sk_" + secrets.token_hex(32)
    key = ApiKey(id=uuid7(), project_id=project_id, name=name, prefix=plaintext[3:11],
                 key_hash=hash_key(plaintext), scopes=scopes, created_at=now)
    session.add(key)
    session.flush()
    return key, plaintext


def list_keys(session: Session, project_id: str | None = None) -> list[ApiKey]:
    query = sa.select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
    if project_id is not None:
        query = query.where(ApiKey.project_id == project_id)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str, now: datetime) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key with id {key_id}")
    if key.revoked_at is None:
        key.revoked_at = now
    return key


# The key columns every authentication reads, labelled so that they can share a row with other tables'
# columns (``shared.jobs.store.find_key_and_job`` answers the key and the job in one statement).
KEYS: sa.Table = ApiKey.__table__  # type: ignore[assignment]
KEY_FIELDS = (KEYS.c.id.label("key_id"), KEYS.c.project_id.label("key_project_id"),
              KEYS.c.scopes.label("key_scopes"), KEYS.c.revoked_at.label("key_revoked_at"),
              KEYS.c.last_used_at.label("key_last_used_at"))


def key_columns_sql(alias: str | None = None) -> str:
    """``KEY_FIELDS`` as a select list of text SQL (``k.id AS key_id, …`` for alias ``k``)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f"{prefix}{field.element.name} AS {field.name}" for field in KEY_FIELDS)


# Runs on every request that is not a trigger or a job read (those read the key with the job): prepared,
# planned once per connection (``shared.db.prepared.PreparedQuery``).
_BY_DIGEST = PreparedQuery.build("sluice_key_by_digest",
                                 f"SELECT {key_columns_sql()} FROM api_keys WHERE key_hash = :digest")
_TOUCH = sa.update(KEYS).where(KEYS.c.id == sa.bindparam("key_id")).values(last_used_at=sa.bindparam("now"))


def key_digest(plaintext: str) -> str | None:
    """The stored digest of a presented key, or ``None`` when it is not even shaped like a key."""
    return hash_key(plaintext) if KEY_RE.fullmatch(plaintext) else None


def principal_from_row(session: Session, row: Mapping[Any, Any] | None, now: datetime) -> Principal | None:
    """The principal of a row mapping holding ``KEY_FIELDS`` (``None``/NULL key id = unknown key), or ``None`` when
    unknown or revoked. Writes the throttled ``last_used_at`` and flags it in ``session.info`` so that a
    caller inside a transaction commits it (``api.auth``)."""
    if row is None or row["key_id"] is None or row["key_revoked_at"] is not None:
        return None
    last_used = row["key_last_used_at"]
    if last_used is None or now - last_used > LAST_USED_RESOLUTION:
        session.execute(_TOUCH, {"key_id": row["key_id"], "now": now})
        session.info["wrote_last_used_at"] = True
    return Principal(key_id=row["key_id"], project_id=row["key_project_id"], scopes=frozenset(row["key_scopes"]))


def read_key(session: Session, digest: str) -> Mapping[str, Any] | None:
    """The key's columns (``KEY_FIELDS``) by its digest, ``None`` when unknown: the key read of a request
    that reads nothing else with it. Every request reads the key row: revocation (``revoked_at``) is
    effective for every request that starts after ``revoke_key`` commits (CONTRACT §9.1), with no cache
    to invalidate."""
    row = _BY_DIGEST.first(session.connection(), {"digest": digest})
    return None if row is None else row._mapping  # type: ignore[no-any-return]


def authenticate(session: Session, plaintext: str, now: datetime) -> Principal | None:
    """The principal for a presented key, or ``None`` if malformed, unknown or revoked."""
    digest = key_digest(plaintext)
    return None if digest is None else principal_from_row(session, read_key(session, digest), now)
