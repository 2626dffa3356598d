"""Identifier formats of CONTRACT §1.2: UUIDv7 for rows, ``ver_`` ids for versions, ``sk_`` API keys.

UUIDv7 ids made in one process sort in the order they were made, even within one millisecond (RFC 9562
§6.2, method 1, a fixed-length dedicated counter)::

    48 bits  Unix milliseconds
     4 bits  version 7
    12 bits  counter, high part      } 42-bit counter: seeded at random (top bit 0, for headroom) when the
     2 bits  variant 10              } millisecond changes, + 1 for each further id of that millisecond
    30 bits  counter, low part       }
    32 bits  random, fresh per id

A counter that would overflow moves the timestamp on by one millisecond (RFC 9562's advice), and a clock
that steps back is ignored until it passes the last timestamp used, so ids never go backwards. Across
processes ids sort by millisecond only; the random tail keeps them unique.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable

_VERSION_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

COUNTER_BITS = 42
_MS_MASK = (1 << 48) - 1
_TEXT = "%08x-%04x-%04x-%04x-%04x%08x"


class UuidV7Source:
    """Makes monotonic UUIDv7 strings; thread-safe. ``clock_ns`` and ``random_bytes`` are injectable, and
    ``counter_bits`` (at most ``COUNTER_BITS``) narrows the counter so a test can see it overflow."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns,
                 random_bytes: Callable[[int], bytes] = os.urandom, counter_bits: int = COUNTER_BITS) -> None:
        if not 2 <= counter_bits <= COUNTER_BITS:
            raise ValueError(f"counter_bits must be 2..{COUNTER_BITS}")
        self._clock_ns = clock_ns
        self._random_bytes = random_bytes
        self._counter_max = (1 << counter_bits) - 1
        self._seed_shift = 48 - (counter_bits - 1)  # a fresh millisecond's counter starts in the lower half
        self._lock = threading.Lock()
        self._ms = -1
        self._counter = 0

    def reset_lock(self) -> None:
        """A fresh lock (in a forked child, whose copy may have been held by a thread that no longer exists)."""
        self._lock = threading.Lock()

    def make(self, count: int) -> list[str]:
        """``count`` ids, each greater than every id this source made before: one clock read and one read
        of the random source."""
        now_ms = (self._clock_ns() // 1_000_000) & _MS_MASK
        random = self._random_bytes(6 + 4 * count)
        seed = int.from_bytes(random[:6], "big") >> self._seed_shift
        ids = []
        with self._lock:
            ms, counter = self._ms, self._counter
            if now_ms > ms:
                ms, counter = now_ms, seed - 1
            for tail in range(6, 6 + 4 * count, 4):
                counter += 1
                if counter > self._counter_max:  # this millisecond is used up: borrow the next one
                    ms, counter = (ms + 1) & _MS_MASK, seed
                # The canonical text form straight from the fields, without building a uuid.UUID: time high,
                # time low, version + counter high, variant + counter middle, counter low + random tail.
                ids.append(_TEXT % (ms >> 16, ms & 0xFFFF, 0x7000 | counter >> 30, 0x8000 | (counter >> 16) & 0x3FFF,
                                    counter & 0xFFFF, int.from_bytes(random[tail:tail + 4], "big")))
            self._ms, self._counter = ms, counter
        return ids


_SOURCE = UuidV7Source()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SOURCE.reset_lock)


def uuid7() -> str:
    """A UUIDv7 string, greater than every id this process made before (see the module doc)."""
    return _SOURCE.make(1)[0]


def uuid7s(count: int) -> list[str]:
    """``count`` UUIDv7 strings in the order they sort in, each greater than every id made before them in
    this process: several ids per attempt from one read of the clock and one of the random source."""
    return _SOURCE.make(count)


def new_version_id() -> str:
    return "ver_" + "".join(secrets.choice(_VERSION_ALPHABET) for _ in range(12))


def is_uuid(value: str) -> bool:
    return bool(_UUID_RE.fullmatch(value))


def canonical_uuid(value: str) -> str | None:
    """The lowercase canonical form of ``value`` if it parses as a UUID, else ``None``."""
    if not is_uuid(value):
        return None
    return str(uuid.UUID(value))
