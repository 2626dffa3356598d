"""Identifier formats of CONTRACT §1.2: UUIDv7 for rows, ``ver_`` ids for versions, ``sk_`` API keys."""

from __future__ import annotations

import os
import re
import secrets
import time
import uuid

_VERSION_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def uuid7() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, then 74 random bits, so ids sort by creation time."""
    return uuid7s(1)[0]


def uuid7s(count: int) -> list[str]:
    """``count`` UUIDv7 strings of this millisecond, sorted (in the order they sort in), from one read of the
    clock and one of the random source: several ids per attempt."""
    ms = (time.time_ns() // 1_000_000) & ((1 << 48) - 1)
    random_bytes = os.urandom(10 * count)
    ids = []
    for index in range(count):
        rand = int.from_bytes(random_bytes[10 * index:10 * index + 10], "big")
        value = ms << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | rand & ((1 << 62) - 1)
        h = f"{value:032x}"  # the canonical text form, without building a uuid.UUID
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return sorted(ids) if count > 1 else ids


def new_version_id() -> str:
    return "ver_" + "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(12))


def is_uuid(value: str) -> bool:
    return bool(_UUID_RE.fullmatch(value))


def canonical_uuid(value: str) -> str | None:
    """The lowercase canonical form of ``value`` if it parses as a UUID, else ``None``."""
    if not is_uuid(value):
        return None
    return str(uuid.UUID(value))
