"""Stops endpoint calls from outside: at their deadline, or when their run is canceled (CONTRACT §5.5, §5.17).

A call blocked in ``connect``, a TLS handshake or ``recv`` cannot check anything itself, so one watchdog
thread per client watches every call in progress. When a call's deadline passes, or its ``should_abort``
hook (polled every ``POLL_SECS``) turns true, the watchdog marks the call stopped and shuts its socket
down: the blocked call returns at once with a socket error, and the caller asks its ``Guard`` why.

The watchdog shuts down a duplicate of the connection's socket (``SocketHandle``), so it reaches the TCP
connection whatever wraps it meanwhile (TLS replaces the socket object during the handshake) and can never
touch a descriptor that was closed and reused elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("sluice.worker")

POLL_SECS = 0.25  # how often abort hooks are polled: a cancel is noticed within this (plus the hook's own lag)


class CallAborted(Exception):
    """``should_abort()`` turned true while the call was in progress (§5.17); the outcome is discarded."""


class DeadlinePassed(Exception):
    """The call's deadline passed in some phase (DNS, connect, TLS, send, wait or read)."""


class SocketHandle:
    """A duplicate descriptor of one connection's socket that another thread may shut down at any time.

    It lives as long as one call uses the connection (an idle pooled connection holds no duplicate). A
    socket object is built on the duplicate only to shut it down, which is rare: building one per call
    costs four system calls (``getsockopt`` twice, ``getsockname``, ``fcntl``) of every endpoint call.
    """

    def __init__(self, sock: socket.socket) -> None:
        # os.dup, not sock.dup(): an SSLSocket refuses dup(), and the descriptor is all that is needed.
        self._fd: int | None = os.dup(sock.fileno())
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                # Not connected yet or already gone: the blocked call fails or ends either way.
                with contextlib.suppress(OSError):
                    dup = socket.socket(fileno=self._fd)
                    try:
                        dup.shutdown(socket.SHUT_RDWR)
                    finally:
                        dup.detach()  # the descriptor stays this handle's, closed by ``close``

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Guard:
    """One call as the watchdog sees it: its deadline, its abort hook and the socket it is using."""

    def __init__(self, deadline: float, should_abort: Callable[[], bool] | None) -> None:
        self.deadline = deadline
        self._should_abort = should_abort
        self._next_abort_check = time.monotonic() + POLL_SECS
        self._lock = threading.Lock()
        self._handle: SocketHandle | None = None
        self._stopped_by: type[Exception] | None = None

    def attach(self, handle: SocketHandle) -> None:
        """Watch ``handle`` from now on (shut at once if the call was stopped meanwhile); the guard owns it
        and closes it when another is attached or on ``detach``."""
        with self._lock:
            previous, self._handle = self._handle, handle
            if self._stopped_by is not None:
                handle.shutdown()
        if previous is not None and previous is not handle:
            previous.close()

    def detach(self) -> type[Exception] | None:
        """Stop watching (the connection may go back to its pool) and close the handle. Returns what stopped
        the call while it was watched, if anything: what was read since may have been cut short."""
        with self._lock:
            handle, self._handle = self._handle, None
            stopped_by = self._stopped_by
        if handle is not None:
            handle.close()
        return stopped_by

    def time_left(self) -> float:
        """Seconds until the deadline; raises ``CallAborted``/``DeadlinePassed`` if the call must stop."""
        self.raise_if_stopped()
        return self.deadline - time.monotonic()

    def raise_if_stopped(self) -> None:
        stopped_by = self._stopped_by
        if stopped_by is None and time.monotonic() >= self.deadline:
            stopped_by = DeadlinePassed
        if stopped_by is not None:
            raise stopped_by()

    @property
    def stopped(self) -> bool:
        return self._stopped_by is not None

    def check(self, now: float) -> None:
        """Watchdog side: stop the call if its deadline passed or its abort hook says so."""
        if self._stopped_by is not None:
            return
        if self._should_abort is not None and now >= self._next_abort_check:
            self._next_abort_check = now + POLL_SECS
            try:
                aborted = self._should_abort()
            except Exception:  # a broken hook must not stop the watchdog: the deadline still holds
                log.exception("abort hook failed; the call continues until its deadline")
                aborted = False
            if aborted:
                self._stop(CallAborted)
                return
        if now >= self.deadline:
            self._stop(DeadlinePassed)

    def _stop(self, reason: type[Exception]) -> None:
        with self._lock:
            self._stopped_by = reason
            if self._handle is not None:
                self._handle.shutdown()


class Watchdog:
    """A daemon thread that checks every registered ``Guard``; started on first use, stopped by ``close``."""

    def __init__(self) -> None:
        self._guards: set[Guard] = set()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wakes_at = math.inf  # when the thread looks at the guards next

    def watch(self, deadline: float, should_abort: Callable[[], bool] | None) -> Guard:
        guard = Guard(deadline, should_abort)
        with self._wake:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="sluice-http-watchdog", daemon=True)
                self._thread.start()
            self._guards.add(guard)
            # Wake the thread only if it would look too late; with calls running it looks every POLL_SECS,
            # so most calls cost no thread switch.
            if deadline < self._wakes_at:
                self._wake.notify()
        return guard

    def release(self, guard: Guard) -> None:
        with self._wake:
            self._guards.discard(guard)
        guard.detach()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                for guard in self._guards:
                    guard.check(now)
                running = [g.deadline for g in self._guards if not g.stopped]
                # Sleep until the nearest deadline or the next abort poll; with no call running, until one starts.
                sleep = max(0.0, min(POLL_SECS, min(running) - time.monotonic())) if running else None
                self._wakes_at = math.inf if sleep is None else time.monotonic() + sleep
                self._wake.wait(sleep)
