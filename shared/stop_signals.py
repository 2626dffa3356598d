"""Stop signals: a handler that only records them, and a main thread that acts on them.

A Python signal handler runs on the main thread between two bytecodes, also while that thread holds a lock:
an ``Event``'s own inside ``wait``, logging's inside a log call. A handler that takes the same lock again
(``Event.set``, a log line) waits on its own thread forever; a killed ``sluice dev``'s scheduler once got
three SIGTERMs in 14 ms and never exited. So the handler appends to a list, and the main thread polls it
(``wait``) and does the stopping. Every Sluice process that handles signals itself goes through here.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from types import FrameType

# How late the main thread may notice a signal: a signal runs its handler and the sleep goes on.
POLL_SECS = 0.2

# A repeated SIGTERM is never a "force" request: under a process manager (honcho, foreman) SIGTERM goes to
# the whole process group, so a child gets it directly *and* forwarded by its parent.
FORCE_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT})


class StopSignals:
    """The stop signals this process has received, oldest first; installed for ``signals`` at construction.

    ``on_force`` runs inside the handler when SIGINT or SIGQUIT follows an earlier stop signal (someone
    pressing Ctrl-C again): it must take no lock, so ``os.kill`` and ``os._exit`` only.
    """

    def __init__(self, signals: Iterable[int], *, on_force: Callable[[], None] | None = None) -> None:
        self.received: list[int] = []
        self._on_force = on_force
        for signum in signals:
            signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if self.received and signum in FORCE_SIGNALS and self._on_force is not None:
            self._on_force()
        self.received.append(signum)  # a list append takes no lock

    @property
    def first(self) -> str | None:
        """The name of the signal that asked to stop, if one has."""
        return signal.Signals(self.received[0]).name if self.received else None

    def wait(self, secs: float) -> bool:
        """Sleep until a stop signal has arrived or ``secs`` have passed; whether one has arrived."""
        deadline = time.monotonic() + secs
        while not self.received and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(POLL_SECS, left))
        return bool(self.received)
