"""Child processes of ``sluice dev``: each in its own process group, none outliving dev.

Own process group: a terminal's Ctrl-C reaches dev alone, which then stops its children in order (the API,
the scheduler, the workers, then Redis and PostgreSQL), so nothing loses its database while still working.

Not outliving dev: on Linux every child asks the kernel for a signal when dev dies, even by SIGKILL
(``PR_SET_PDEATHSIG``). Elsewhere a killed dev leaves its children running; PostgreSQL's is found and
stopped at the next start (``shared.cli.embedded_postgres``).

A role child runs one of the composition root's role functions (``shared.cli.roles``) in a fresh
interpreter, as multiprocessing's spawn would, but through ``Popen`` so that it gets its process group
and parent-death signal before any of its code runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from shared.cli.roles import RoleEntry

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``signum`` to the child when this process dies (Linux);
    ``None`` on other systems. It runs in the child after ``Popen`` changed user, which would reset it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def entry_command(entry: RoleEntry, args: list[str]) -> list[str]:
    """The command line that runs ``entry(args)`` in a fresh interpreter and exits with its return code."""
    if "." in entry.__qualname__ or "<" in entry.__qualname__:
        raise ValueError(f"{entry.__qualname__} is not a module-level function")
    code = f"import sys; from {entry.__module__} import {entry.__qualname__} as entry; sys.exit(entry(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


class Child:
    """One role process in its own process group, sent SIGTERM if dev dies."""

    def __init__(self, name: str, entry: RoleEntry, args: list[str], env: Mapping[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(entry_command(entry, args), env=dict(env), stdin=subprocess.DEVNULL,
                                        process_group=0, preexec_fn=die_with_parent(signal.SIGTERM))

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> int | None:
        return self.process.poll()

    def stop(self, grace_secs: float, hurry: Callable[[], bool]) -> None:
        """SIGTERM the main process, wait up to ``grace_secs`` (less once ``hurry()``), then SIGKILL
        whatever is left of its process group (a gunicorn or dramatiq grandchild)."""
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM, group=False)
            deadline = time.monotonic() + grace_secs
            while self.process.poll() is None and time.monotonic() < deadline and not hurry():
                time.sleep(0.05)
        signal_group(self.process.pid, signal.SIGKILL, group=True)
        self.process.wait()


def signal_group(pid: int, signum: int, *, group: bool) -> None:
    """Signal a child (``group``: its whole process group, which it leads), ignoring one already gone."""
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
