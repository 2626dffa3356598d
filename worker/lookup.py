"""The one name lookup of an endpoint call, inside the call's deadline and stoppable by a cancel."""

from __future__ import annotations

import functools
import ipaddress
import queue
import threading
from collections.abc import Callable
from typing import TypeAlias
from urllib.parse import urlsplit

from worker.watchdog import POLL_SECS, Guard

Resolver: TypeAlias = Callable[[str], tuple[str, int, list[str]]]
"""``url -> (host, port, checked IPs)``; raises ``AddressRefused`` or ``ResolutionFailed``."""

IDLE_SECS = 60.0  # a lookup thread with nothing to do for this long ends


class LookupThreads:
    """Daemon threads that run name lookups, kept between calls: starting a thread costs several times a
    lookup from ``/etc/hosts`` or the resolver's cache. A lookup goes to an idle thread, or to a new one when
    none is idle, so a lookup that hangs (``getaddrinfo`` ignores every deadline) holds its own thread and
    never delays the next call's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a lookup that no submit has claimed yet
        self._lookups: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def submit(self, lookup: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # claimed: one waiting thread will take it
                self._lookups.put(lookup)
                return
        # Handed over in a list the thread empties: a thread's own arguments live as long as it does.
        threading.Thread(target=self._serve, args=([lookup],), name="sluice-resolve", daemon=True).start()

    def _serve(self, first: list[Callable[[], None]]) -> None:
        lookup: Callable[[], None] | None = first.pop()
        while lookup is not None:
            lookup()
            lookup = None  # an idle thread holds nothing of the call it served (its resolver holds a runner)
            lookup = self._next()

    def _next(self) -> Callable[[], None] | None:
        """The next lookup, or ``None`` once this thread has been idle for ``IDLE_SECS`` and should end."""
        with self._lock:
            self._idle += 1
        try:
            return self._lookups.get(timeout=IDLE_SECS)
        except queue.Empty:
            with self._lock:
                if self._idle:  # still unclaimed: end
                    self._idle -= 1
                    return None
            return self._lookups.get()  # claimed just as the wait ended: its lookup is on the way


_THREADS = LookupThreads()


@functools.lru_cache(maxsize=1024)  # a job's hosts repeat
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def resolve_within(resolve: Resolver, url: str, guard: Guard) -> tuple[str, int, list[str]]:
    """Run the resolver (the address policy's check) within the call's deadline.

    ``getaddrinfo`` cannot be interrupted, so a name lookup runs on a lookup thread we stop waiting for at
    the deadline or on abort (``guard`` raises). IP literals need no lookup and skip the thread.
    """
    if _is_ip_literal(urlsplit(url).hostname or ""):
        guard.raise_if_stopped()
        return resolve(url)
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = resolve(url)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    _THREADS.submit(run)
    while not done.wait(min(POLL_SECS, max(0.0, guard.time_left()))):
        pass
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
