"""The threads that run endpoint name lookups: kept between calls, never shared with a lookup that hangs."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from worker import lookup
from worker.lookup import LookupThreads


def _run(threads: LookupThreads, work=lambda: None) -> str:  # type: ignore[no-untyped-def]
    """Submit ``work``; the name of the thread that ran it (waits for it)."""
    ran: list[int] = []
    done = threading.Event()

    def job() -> None:
        work()
        ran.append(threading.get_ident())
        done.set()

    threads.submit(job)
    assert done.wait(5)
    return str(ran[0])


def test_lookups_one_after_another_reuse_one_thread() -> None:
    threads = LookupThreads()
    first = _run(threads)
    time.sleep(0.01)  # the thread is back to waiting
    assert {_run(threads) for _ in range(20)} == {first}


def test_a_hanging_lookup_keeps_its_thread_and_the_next_one_gets_another() -> None:
    threads = LookupThreads()
    release = threading.Event()
    hanging = threading.Thread(target=_run, args=(threads, release.wait), daemon=True)
    hanging.start()
    time.sleep(0.05)  # the hanging lookup holds the only thread
    started = time.monotonic()
    _run(threads)
    assert time.monotonic() - started < 1
    release.set()
    hanging.join(5)


def test_idle_threads_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookup, "IDLE_SECS", 0.05)
    threads = LookupThreads()
    ident = _run(threads)

    def alive() -> bool:
        return ident in {str(thread.ident) for thread in threading.enumerate()}

    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive()
    _run(threads)  # and a lookup after that starts a new one


def test_an_idle_thread_holds_nothing_of_the_lookup_it_ran() -> None:
    """A lookup's resolver belongs to a runner (its database connection included): an idle thread that kept
    the last lookup would keep that runner alive for as long as the thread waits."""

    class Resolver:
        def __call__(self) -> None:
            pass

    threads = LookupThreads()
    resolver = Resolver()
    held = weakref.ref(resolver)
    ident = _run(threads, resolver)
    del resolver
    time.sleep(0.05)  # the thread is back to waiting
    gc.collect()
    assert ident in {str(thread.ident) for thread in threading.enumerate()}  # still there, idle
    assert held() is None
