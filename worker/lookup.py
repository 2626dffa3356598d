"""The one name lookup of an endpoint call, inside the call's deadline and stoppable by a cancel."""

from __future__ import annotations

import functools
import ipaddress
import threading
from collections.abc import Callable
from typing import TypeAlias
from urllib.parse import urlsplit

from worker.watchdog import POLL_SECS, Guard

Resolver: TypeAlias = Callable[[str], tuple[str, int, list[str]]]
"""``url -> (host, port, checked IPs)``; raises ``AddressRefused`` or ``ResolutionFailed``."""


@functools.lru_cache(maxsize=1024)  # a job's hosts repeat
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def resolve_within(resolve: Resolver, url: str, guard: Guard) -> tuple[str, int, list[str]]:
    """Run the resolver (the address policy's check) within the call's deadline.

    ``getaddrinfo`` cannot be interrupted, so a name lookup runs on a daemon thread we stop waiting for at
    the deadline or on abort (``guard`` raises). IP literals need no lookup and skip the thread.
    """
    if _is_ip_literal(urlsplit(url).hostname or ""):
        guard.raise_if_stopped()
        return resolve(url)
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = resolve(url)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="sluice-resolve", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(min(POLL_SECS, max(0.0, guard.time_left())))
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
