"""The one name lookup of an endpoint call, inside the call's deadline and stoppable by a cancel."""

from __future__ import annotations

import functools
import ipaddress
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeAlias
from urllib.parse import urlsplit

from worker.watchdog import POLL_SECS, Guard

Resolver: TypeAlias = Callable[[str], tuple[str, int, list[str]]]
"""``url -> (host, port, checked IPs)``; raises ``AddressRefused`` or ``ResolutionFailed``."""

Lookup: TypeAlias = Callable[[], tuple[str, int, list[str]]]

# A lookup thread with nothing to do for this long ends (a busy process keeps about one per calling thread).
IDLE_SECS = 60.0


@functools.lru_cache(maxsize=1024)  # a job's hosts repeat
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class LookupThreads:
    """Daemon threads that run name lookups, reused from one call to the next.

    A lookup goes to a thread that is idle, or to a new one when none is: a lookup hung on a dead name
    server (``getaddrinfo`` cannot be interrupted) never delays another call's, as with a thread per call,
    without starting a thread per call. Daemons never keep the process from exiting.
    """

    def __init__(self, idle_secs: float = IDLE_SECS) -> None:
        self._tasks: queue.SimpleQueue[tuple[Lookup, Future[tuple[str, int, list[str]]]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a task and not about to end
        self._idle_secs = idle_secs

    def submit(self, lookup: Lookup) -> Future[tuple[str, int, list[str]]]:
        future: Future[tuple[str, int, list[str]]] = Future()
        with self._lock:
            if self._idle:
                self._idle -= 1  # this task is that thread's
            else:
                threading.Thread(target=self._work, name="sluice-resolve", daemon=True).start()
        self._tasks.put((lookup, future))
        return future

    def _work(self) -> None:
        while True:
            try:
                lookup, future = self._tasks.get(timeout=self._idle_secs)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # still counted idle: no task is coming for this thread
                        self._idle -= 1
                        return
                continue  # a submitter counted on this thread just now: its task is on its way
            try:
                future.set_result(lookup())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def idle(self) -> int:
        with self._lock:
            return self._idle


@functools.cache
def lookup_threads() -> LookupThreads:
    """The process's lookup threads (made on the first call to a host name, not at import)."""
    return LookupThreads()


def resolve_within(resolve: Resolver, url: str, guard: Guard) -> tuple[str, int, list[str]]:
    """Run the resolver (the address policy's check) within the call's deadline.

    ``getaddrinfo`` cannot be interrupted, so a name lookup runs on a lookup thread we stop waiting for at
    the deadline or on abort (``guard`` raises). IP literals need no lookup and run here.
    """
    if _is_ip_literal(urlsplit(url).hostname or ""):
        guard.raise_if_stopped()
        return resolve(url)
    future = lookup_threads().submit(lambda: resolve(url))
    while True:
        try:
            return future.result(timeout=min(POLL_SECS, max(0.0, guard.time_left())))
        except FutureTimeout:
            continue  # time_left raises once the deadline has passed or the call is canceled
