"""The API's gunicorn worker: gthread, but a busy process leaves a new connection to an idler sibling.

gunicorn's workers share one listening socket and each accepts whenever its poller says a connection
waits. The process that happens to be awake wins, so a burst of keep-alive clients (a load balancer's
pool, an SDK's session pool) piles onto one process: on a 2 × 8 server we measured 31 of 32 client
connections on one worker. That process is then bound by its GIL while the other idles, and every
request queues behind 30 others.

This worker accepts at once while it has fewer connections than threads. Beyond that it steps back for
a moment that grows with its excess (``BACKOFF_STEP`` per connection, at most ``BACKOFF_MAX``) and only
then accepts, unless a sibling took the connection meanwhile. The least loaded process wins, which
spreads long-lived connections evenly, like nginx's accept mutex. The cost is a few milliseconds on a
new connection to a busy server; requests on open connections are untouched.

It relies on gunicorn 27's ``ThreadWorker`` loop (``accept``, ``set_accept_enabled``,
``wait_for_and_dispatch_events``, ``nr_conns``); the version range in pyproject.toml keeps it there.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

BACKOFF_STEP = 0.002  # seconds per connection above the thread count
BACKOFF_MAX = 0.05
# After its back-off a worker may accept one connection without stepping back again, for this long.
ACCEPT_WINDOW = 0.05


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_at = float("-inf")

    def accept(self, listener: Any) -> None:
        excess = self.nr_conns + 1 - self.cfg.threads if self.cfg.workers > 1 else 0  # a sibling to leave it to
        now = time.monotonic()
        backed_off = self._resume_at <= now < self._resume_at + ACCEPT_WINDOW
        if excess > 0 and not backed_off:
            self._resume_at = now + min(excess * BACKOFF_STEP, BACKOFF_MAX)
            self.set_accept_enabled(False)
            return
        if backed_off:
            self._resume_at = float("-inf")  # one connection per back-off
        super().accept(listener)

    def set_accept_enabled(self, enabled: bool) -> None:
        # The loop re-enables accepting on every pass; hold it off until the back-off is over.
        if enabled and time.monotonic() < self._resume_at:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        backing_off_for = self._resume_at - time.monotonic()
        if backing_off_for > 0:  # wake up when the back-off ends, not up to a second later
            timeout = min(timeout, backing_off_for)
        super().wait_for_and_dispatch_events(timeout)
