"""Name lookups of endpoint calls run on reused daemon threads: one per concurrent lookup, none per call, and a
lookup hung on a dead name server never holds up another."""

from __future__ import annotations

import threading
import time

import pytest

from worker.lookup import LookupThreads, resolve_within
from worker.watchdog import CallAborted, DeadlinePassed, Guard


def _threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "sluice-resolve")


def _answer(host: str) -> tuple[str, int, list[str]]:
    return host, 443, ["192.0.2.1"]


def test_lookups_one_after_another_reuse_one_thread() -> None:
    lookups = LookupThreads()
    before = _threads()
    for n in range(50):
        assert lookups.submit(lambda n=n: _answer(f"h{n}.test")).result(timeout=5) == _answer(f"h{n}.test")
        deadline = time.monotonic() + 5
        while lookups.idle() != 1 and time.monotonic() < deadline:  # the thread is back before the next one
            time.sleep(0.001)
    assert _threads() - before == 1


def test_a_hung_lookup_never_holds_up_another() -> None:
    lookups = LookupThreads()
    name_server_back = threading.Event()

    def hung() -> tuple[str, int, list[str]]:
        name_server_back.wait(10)
        return _answer("hung.test")

    try:
        stuck = lookups.submit(hung)
        started = time.monotonic()
        assert lookups.submit(lambda: _answer("quick.test")).result(timeout=5) == _answer("quick.test")
        assert time.monotonic() - started < 1 and not stuck.done()
    finally:
        name_server_back.set()
    assert stuck.result(timeout=5) == _answer("hung.test")


def test_idle_threads_end() -> None:
    lookups = LookupThreads(idle_secs=0.1)
    before = _threads()
    futures = [lookups.submit(lambda: (time.sleep(0.05), _answer("x.test"))[1]) for _ in range(3)]
    assert [f.result(timeout=5) for f in futures] == [_answer("x.test")] * 3
    deadline = time.monotonic() + 5
    while _threads() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _threads() == before and lookups.idle() == 0
    assert lookups.submit(lambda: _answer("again.test")).result(timeout=5) == _answer("again.test")


def test_errors_reach_the_caller() -> None:
    def failing() -> tuple[str, int, list[str]]:
        raise OSError("Name or service not known")

    with pytest.raises(OSError, match="not known"):
        LookupThreads().submit(failing).result(timeout=5)


def test_the_call_stops_waiting_at_its_deadline_or_its_cancel() -> None:
    release = threading.Event()

    def slow(_url: str) -> tuple[str, int, list[str]]:
        release.wait(10)
        return _answer("slow.test")

    try:
        started = time.monotonic()
        with pytest.raises(DeadlinePassed):
            resolve_within(slow, "https://slow.test/hook", Guard(time.monotonic() + 0.3, None))
        assert time.monotonic() - started < 1
        canceled = Guard(time.monotonic() + 30, lambda: True)  # the watchdog's next look finds it canceled
        threading.Timer(0.2, lambda: canceled.check(time.monotonic() + 1)).start()
        with pytest.raises(CallAborted):
            resolve_within(slow, "https://slow.test/hook", canceled)
        assert time.monotonic() - started < 2
    finally:
        release.set()
