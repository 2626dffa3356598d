"""UUIDv7 ids (CONTRACT §1.2): ids made in one process sort in the order they were made, even within one
millisecond and across threads (RFC 9562's monotonic counter)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

from shared.ids import COUNTER_BITS, UuidV7Source, uuid7, uuid7s


def _clock(values: list[int]) -> Iterator[int]:
    yield from values


def _fixed_source(ms_values: list[int], seed: int = 0) -> UuidV7Source:
    """A source whose clock reads ``ms_values`` in turn and whose random bytes are all ``seed``."""
    ticks = _clock([ms * 1_000_000 for ms in ms_values])
    return UuidV7Source(clock_ns=lambda: next(ticks), random_bytes=lambda n: bytes([seed]) * n)


def _ms(value: str) -> int:
    return uuid.UUID(value).int >> 80


def test_ids_are_canonical_uuid_v7() -> None:
    for value in [uuid7(), *uuid7s(3)]:
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 7 and parsed.variant == uuid.RFC_4122


def test_ids_made_one_after_another_sort_in_that_order() -> None:
    made = [uuid7() for _ in range(20_000)]  # thousands per millisecond
    assert made == sorted(made) and len(set(made)) == len(made)
    assert len({_ms(v) for v in made}) < len(made)  # many shared a millisecond


def test_batches_continue_the_order() -> None:
    made = [*uuid7s(5), uuid7(), *uuid7s(3), uuid7()]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_ids_made_by_many_threads_sort_in_the_order_they_were_made() -> None:
    made: list[str] = []
    lock = threading.Lock()

    def make() -> None:
        for _ in range(2_000):
            with lock:  # the order of making is the order of appending
                made.append(uuid7())

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == sorted(made) and len(set(made)) == len(made)


def test_each_thread_sees_its_own_ids_increase_and_none_repeat() -> None:
    per_thread: list[list[str]] = [[] for _ in range(8)]

    def make(out: list[str]) -> None:
        for _ in range(3_000):
            out.append(uuid7())

    threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(out == sorted(out) for out in per_thread)
    assert len({v for out in per_thread for v in out}) == 8 * 3_000


def test_a_clock_stepping_back_never_makes_a_smaller_id() -> None:
    source = _fixed_source([5_000, 4_000, 4_999, 5_000, 5_001])
    made = [source.make(1)[0] for _ in range(5)]
    assert made == sorted(made) and len(set(made)) == 5
    assert [_ms(v) for v in made] == [5_000, 5_000, 5_000, 5_000, 5_001]


def _counter(value: str) -> int:
    number = uuid.UUID(value).int
    return (number >> 64 & 0xFFF) << 30 | (number >> 32 & ((1 << 30) - 1))


def test_a_fresh_millisecond_seeds_the_counter_in_its_lower_half() -> None:
    source = _fixed_source([7_000], seed=0xFF)  # the largest random seed
    assert _counter(source.make(1)[0]) == (1 << (COUNTER_BITS - 1)) - 1


def test_a_full_counter_borrows_the_next_millisecond() -> None:
    ticks = iter([7_000_000_000] * 3)
    source = UuidV7Source(clock_ns=lambda: next(ticks), random_bytes=lambda n: bytes([0xFF]) * n, counter_bits=4)
    made = source.make(9) + source.make(1) + source.make(1)  # counters 7..15 at 7 000 ms, then 7 001 ms
    assert made == sorted(made) and len(set(made)) == len(made)
    assert [_ms(v) for v in made] == [7_000] * 9 + [7_001] * 2
    assert [_counter(v) for v in made] == [*range(7, 16), 7, 8]
