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
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64  # 12 bits rand_a
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"  # the canonical text form, without building a uuid.UUID (several ids per attempt)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_version_id() -> str:
    return "ver_" + "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(12))


def is_uuid(value: str) -> bool:
    return bool(_UUID_RE.match(value))


def canonical_uuid(value: str) -> str | None:
    """The lowercase canonical form of ``value`` if it parses as a UUID, else ``None``."""
    if not is_uuid(value):
        return None
    return str(uuid.UUID(value))
