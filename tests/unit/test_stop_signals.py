"""Every stop-signal handler of the product records the signal and nothing more (``shared.stop_signals``).

A handler that sets an ``Event`` or logs can wait forever on a lock its own thread holds (the handler runs
on the main thread between two bytecodes): a scheduler once never exited after three quick SIGTERMs.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from shared.stop_signals import StopSignals

ROOT = Path(__file__).resolve().parents[2]
HANDLER = re.compile(r"signal\.signal\((?P<args>[^)]*)\)")


def test_no_process_installs_a_handler_of_its_own() -> None:
    found = []
    for package in ("api", "worker", "scheduler", "shared"):
        for path in (ROOT / package).rglob("*.py"):
            for match in HANDLER.finditer(path.read_text()):
                if not match["args"].endswith("signal.SIG_IGN") and path.name != "stop_signals.py":
                    found.append(f"{path.relative_to(ROOT)}: {match[0]}")
    assert found == []


def test_signals_are_recorded_and_force_needs_an_earlier_one() -> None:
    forced: list[bool] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        signals = StopSignals((signal.SIGUSR1, signal.SIGUSR2), on_force=lambda: forced.append(True))
        assert not signals.wait(0.05) and signals.first is None
        signals._record(signal.SIGINT, None)  # a first SIGINT asks to stop; it does not force
        assert forced == [] and signals.first == "SIGINT"
        os.kill(os.getpid(), signal.SIGUSR1)
        began = time.monotonic()
        assert signals.wait(5) and time.monotonic() - began < 1
        signals._record(signal.SIGTERM, None)  # a repeated SIGTERM never forces
        assert forced == []
        signals._record(signal.SIGQUIT, None)
        assert forced == [True] and len(signals.received) == 4
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
