"""Write-time DNS lookups under one deadline per request.

Storing a job checks its URLs against the address policy, which resolves their hosts. A batch of 100 jobs
on a name server that never answers would otherwise resolve one host after another, each bounded only by
the system resolver's own timeouts, holding an API thread for minutes. Here every distinct host of the
request is looked up at once on a small pool of daemon threads shared by the process, and the request
waits for them all until one deadline (``BUDGET_SECS``). A host not resolved by then counts as one that
does not resolve: accepted at write time (the policy's rule for unresolvable hosts) and checked again,
as always, when it is called. The pool is bounded: lookups still hung on a dead name server occupy its
threads, further lookups wait in its queue, and a request past its deadline withdraws those it queued.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout

from shared.egress import addresses
from shared.egress.addresses import ResolutionFailed, Resolver, lookup_target

BUDGET_SECS = 3.0
POOL_THREADS = 8

_Task = tuple[Callable[[], list[str]], "Future[list[str]]"]


class _LookupPool:
    """Daemon threads running lookups (a hung ``getaddrinfo`` cannot be interrupted; daemons never keep the
    process from exiting)."""

    def __init__(self, threads: int) -> None:
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        for index in range(threads):
            threading.Thread(target=self._work, name=f"sluice-dns-{index}", daemon=True).start()

    def submit(self, function: Callable[[], list[str]]) -> Future[list[str]]:
        future: Future[list[str]] = Future()
        self._tasks.put((function, future))
        return future

    def _work(self) -> None:
        while True:
            function, future = self._tasks.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the waiting request
                future.set_exception(exc)


@functools.cache
def _pool() -> _LookupPool:
    return _LookupPool(POOL_THREADS)  # started on the first write that resolves, not at import


class DeadlineLookups:
    """A ``Resolver`` for one request: each distinct (host, port) looked up once, all by one deadline."""

    def __init__(self, budget_secs: float = BUDGET_SECS, resolver: Resolver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._deadline = clock() + budget_secs
        self._clock = clock
        self._resolver = resolver or addresses.default_resolver
        self._futures: dict[tuple[str, int], Future[list[str]]] = {}

    def start(self, urls: Iterable[str]) -> DeadlineLookups:
        """Start looking up the hosts of ``urls`` at once (literals and refused shapes need no lookup)."""
        for url in urls:
            target = lookup_target(url)
            if target is not None:
                self._future(*target)
        return self

    def _future(self, host: str, port: int) -> Future[list[str]]:
        future = self._futures.get((host, port))
        if future is None:
            resolver = self._resolver
            future = self._futures[(host, port)] = _pool().submit(lambda: resolver(host, port))
        return future

    def __call__(self, host: str, port: int) -> list[str]:
        future = self._future(host, port)
        try:
            return future.result(timeout=max(self._deadline - self._clock(), 0.0))
        except (FutureTimeout, CancelledError):
            for pending in self._futures.values():
                pending.cancel()  # past the deadline nothing will wait for them: free the pool's queue
            raise ResolutionFailed(f"no answer for host {host!r} within the request's lookup deadline") from None
