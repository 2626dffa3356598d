"""Concurrency leases and sliding-log rate limits against real Redis (CONTRACT §5.8, §5.9).

Most tests drive the clock with ``now_ms`` overrides so boundaries are exact; a few use the server clock.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import pytest
import redis as redis_lib

from shared import redis_keys
from shared.limits.limiter import LimitRequest, Limits, RateRule, rate_rules_for

JOB = "job-1"
T0 = 1_700_000_000_000  # a realistic epoch-ms base for overridden clocks


@pytest.fixture()
def limits(redis_client: redis_lib.Redis) -> Limits:
    return Limits(redis_client)


def req(run_id: str, *, max_concurrency: int | None = None, key: str | None = None,
        per_key: int | None = None, lease_ms: int = 60_000,
        rules: tuple[RateRule, ...] = ()) -> LimitRequest:
    return LimitRequest(run_id=run_id, job_id=JOB, max_concurrency=max_concurrency, concurrency_key=key,
                        max_concurrency_per_key=per_key, lease_ms=lease_ms, rate_rules=rules)


def job_rule(max_: int, window_ms: int) -> RateRule:
    return RateRule(redis_keys.rate_job(JOB), max_, window_ms, "job")


def key_rule(value: str, max_: int, window_ms: int, name: str = "customer") -> RateRule:
    return RateRule(redis_keys.rate_key(JOB, name, value), max_, window_ms, name)


# --- concurrency ---------------------------------------------------------------------------------------

def test_concurrency_cap_and_idempotent_reacquire(limits: Limits, redis_client: redis_lib.Redis) -> None:
    assert limits.acquire(req("r1", max_concurrency=2), now_ms=T0).admitted
    assert limits.acquire(req("r2", max_concurrency=2), now_ms=T0).admitted
    refused = limits.acquire(req("r3", max_concurrency=2), now_ms=T0)
    assert (refused.admitted, refused.reason, refused.retry_at_ms) == (False, "concurrency", None)
    assert refused.limit == {"kind": "max_concurrency", "max": 2, "in_use": 2}
    assert refused.now_ms == T0

    # r1 again: refreshes its own lease, does not take a third slot and is not refused by the cap.
    again = limits.acquire(req("r1", max_concurrency=2, lease_ms=90_000), now_ms=T0 + 10)
    assert again.admitted
    assert limits.slots_in_use(JOB, now_ms=T0 + 10) == 2
    assert redis_client.zscore(redis_keys.concurrency_job(JOB), "r1") == T0 + 10 + 90_000
    assert not limits.acquire(req("r3", max_concurrency=2), now_ms=T0 + 10).admitted


def test_unlimited_job_still_records_leases(limits: Limits) -> None:
    for i in range(5):
        assert limits.acquire(req(f"r{i}"), now_ms=T0).admitted
    assert limits.slots_in_use(JOB, now_ms=T0) == 5
    # Lowering the limit later counts the runs already in flight.
    assert not limits.acquire(req("r9", max_concurrency=5), now_ms=T0).admitted


def test_per_key_cap_with_several_keys(limits: Limits) -> None:
    assert limits.acquire(req("a1", key="a", per_key=1), now_ms=T0).admitted
    assert limits.acquire(req("b1", key="b", per_key=1), now_ms=T0).admitted
    refused = limits.acquire(req("a2", key="a", per_key=1), now_ms=T0)
    assert (refused.admitted, refused.reason) == (False, "concurrency")
    assert refused.limit == {"kind": "max_concurrency_per_key", "key": "a", "max": 1, "in_use": 1}
    assert limits.acquire(req("c1", key="c", per_key=1), now_ms=T0).admitted
    # Unkeyed runs are not limited by the per-key cap (and max_concurrency is unlimited here).
    for i in range(3):
        assert limits.acquire(req(f"u{i}", per_key=1), now_ms=T0).admitted
    assert limits.slots_in_use(JOB, "a", now_ms=T0) == 1
    assert limits.slots_in_use(JOB, now_ms=T0) == 6


def test_keyed_run_needs_room_in_both(limits: Limits) -> None:
    def go(run: str, key: str | None) -> tuple[bool, object]:
        d = limits.acquire(req(run, max_concurrency=3, key=key, per_key=2), now_ms=T0)
        return d.admitted, d.limit.get("kind")

    assert go("r1", "a") == (True, None)
    assert go("r2", "a") == (True, None)
    assert go("r3", "a") == (False, "max_concurrency_per_key")  # job has room, key does not
    assert go("r3", "b") == (True, None)
    assert go("r4", "c") == (False, "max_concurrency")  # key has room, job does not
    assert go("r5", None) == (False, "max_concurrency")


def test_lease_expiry_frees_a_slot(limits: Limits) -> None:
    assert limits.acquire(req("r1", max_concurrency=1, key="k", per_key=1, lease_ms=500), now_ms=T0).admitted
    assert not limits.acquire(req("r2", max_concurrency=1, lease_ms=500), now_ms=T0 + 499).admitted
    assert limits.slots_in_use(JOB, now_ms=T0 + 500) == 0
    assert limits.acquire(req("r2", max_concurrency=1, key="k", per_key=1), now_ms=T0 + 500).admitted


def test_lease_expiry_on_server_clock(limits: Limits) -> None:
    assert limits.acquire(req("r1", max_concurrency=1, lease_ms=100)).admitted
    assert not limits.acquire(req("r2", max_concurrency=1)).admitted
    time.sleep(0.25)
    assert limits.slots_in_use(JOB) == 0
    decision = limits.acquire(req("r2", max_concurrency=1))
    assert decision.admitted
    assert decision.now_ms is not None and abs(decision.now_ms - time.time() * 1000) < 5_000


def test_release_is_idempotent_and_frees_both(limits: Limits, redis_client: redis_lib.Redis) -> None:
    assert limits.acquire(req("r1", max_concurrency=1, key="k", per_key=1), now_ms=T0).admitted
    limits.release("r1", JOB, "k")
    limits.release("r1", JOB, "k")
    limits.release("never-acquired", JOB, None)
    assert redis_client.zscore(redis_keys.concurrency_job(JOB), "r1") is None
    assert redis_client.zscore(redis_keys.concurrency_key(JOB, "k"), "r1") is None
    assert limits.acquire(req("r2", max_concurrency=1, key="k", per_key=1), now_ms=T0).admitted


def test_extend_pushes_leases_and_never_recreates(limits: Limits, redis_client: redis_lib.Redis) -> None:
    assert limits.acquire(req("r1", key="k", lease_ms=1_000), now_ms=T0).admitted
    assert limits.extend("r1", JOB, "k", 5_000, now_ms=T0 + 900)
    for key in (redis_keys.concurrency_job(JOB), redis_keys.concurrency_key(JOB, "k")):
        assert redis_client.zscore(key, "r1") == T0 + 5_900
    assert limits.extend("r1", JOB, "k", 100, now_ms=T0 + 1_000)  # never shortens
    assert redis_client.zscore(redis_keys.concurrency_job(JOB), "r1") == T0 + 5_900
    limits.release("r1", JOB, "k")
    assert not limits.extend("r1", JOB, "k", 5_000, now_ms=T0 + 1_000)
    assert limits.slots_in_use(JOB, now_ms=T0 + 1_000) == 0


def test_extend_recreates_a_lost_lease_when_asked(limits: Limits, redis_client: redis_lib.Redis) -> None:
    """Redis lost the leases of running attempts (a restart): the heartbeat's extend counts them again, even
    above the cap, so new starts are refused until they end; never more admitted than the cap."""
    assert limits.acquire(req("r1", max_concurrency=1, key="k", per_key=1), now_ms=T0).admitted
    redis_client.flushdb()
    assert limits.acquire(req("r2", max_concurrency=1, key="k", per_key=1), now_ms=T0 + 10).admitted
    assert not limits.extend("r1", JOB, "k", 5_000, now_ms=T0 + 20, recreate=True)
    assert limits.slots_in_use(JOB, now_ms=T0 + 30) == 2 and limits.slots_in_use(JOB, "k", now_ms=T0 + 30) == 2
    assert redis_client.pttl(redis_keys.concurrency_job(JOB)) > 0
    refused = limits.acquire(req("r3", max_concurrency=1), now_ms=T0 + 40)
    assert (refused.admitted, refused.reason) == (False, "concurrency")
    assert limits.extend("r1", JOB, "k", 5_000, now_ms=T0 + 50, recreate=True)  # held now


# --- atomicity -----------------------------------------------------------------------------------------

def test_rate_refusal_records_no_lease(limits: Limits, redis_client: redis_lib.Redis) -> None:
    rules = (job_rule(5, 1_000), key_rule("acme", 1, 1_000))
    assert limits.acquire(req("r1", max_concurrency=5, key="k", per_key=5, rules=rules), now_ms=T0).admitted
    refused = limits.acquire(req("r2", max_concurrency=5, key="k", per_key=5, rules=rules), now_ms=T0 + 1)
    assert (refused.admitted, refused.reason) == (False, "rate_limit")
    assert redis_client.zscore(redis_keys.concurrency_job(JOB), "r2") is None
    assert redis_client.zscore(redis_keys.concurrency_key(JOB, "k"), "r2") is None
    # The job rule admitted, yet it got no mark because another rule refused.
    assert redis_client.zcard(rules[0].key) == 1
    assert redis_client.zcard(rules[1].key) == 1


def test_concurrency_refusal_records_no_rate_marks(limits: Limits, redis_client: redis_lib.Redis) -> None:
    assert limits.acquire(req("r1", max_concurrency=1), now_ms=T0).admitted
    rules = (job_rule(5, 1_000), key_rule("acme", 5, 1_000))
    refused = limits.acquire(req("r2", max_concurrency=1, rules=rules), now_ms=T0)
    assert refused.reason == "concurrency"
    assert not redis_client.exists(rules[0].key, rules[1].key)


# --- rate limits ---------------------------------------------------------------------------------------

def test_sliding_window_boundaries_and_retry_at(limits: Limits) -> None:
    rules = (job_rule(3, 1_000),)
    for i, t in enumerate((0, 200, 400)):
        assert limits.acquire(req(f"r{i}", rules=rules), now_ms=T0 + t).admitted
    refused = limits.acquire(req("x", rules=rules), now_ms=T0 + 500)
    assert (refused.reason, refused.retry_at_ms) == ("rate_limit", T0 + 1_000)
    assert refused.limit == {"kind": "rate_limit", "name": "job", "max": 3, "window_secs": 1}
    assert not limits.acquire(req("x", rules=rules), now_ms=T0 + 999).admitted
    assert limits.acquire(req("x", rules=rules), now_ms=T0 + 1_000).admitted  # mark at T0 left the window
    # Now marks at 200, 400, 1000: the next room is when 200 leaves.
    assert limits.acquire(req("y", rules=rules), now_ms=T0 + 1_100).retry_at_ms == T0 + 1_200


def test_retry_at_when_over_max_after_limit_lowered(limits: Limits) -> None:
    for i, t in enumerate((0, 100, 200, 300)):
        assert limits.acquire(req(f"r{i}", rules=(job_rule(10, 1_000),)), now_ms=T0 + t).admitted
    # 4 marks, max now 2: room returns when the 3rd oldest (t=200) leaves, not the oldest.
    refused = limits.acquire(req("x", rules=(job_rule(2, 1_000),)), now_ms=T0 + 400)
    assert refused.retry_at_ms == T0 + 1_200
    assert not limits.acquire(req("x", rules=(job_rule(2, 1_000),)), now_ms=T0 + 1_199).admitted
    assert limits.acquire(req("x", rules=(job_rule(2, 1_000),)), now_ms=T0 + 1_200).admitted


def test_never_more_than_max_in_any_window(limits: Limits) -> None:
    rng = random.Random(7)
    max_, window = 4, 1_000
    rules = (job_rule(max_, window),)
    attempts = sorted(rng.randrange(0, 10_000) for _ in range(400))
    admitted: list[int] = []
    for i, t in enumerate(attempts):
        decision = limits.acquire(req(f"r{i}", rules=rules), now_ms=T0 + t)
        in_window = sum(1 for a in admitted if t - window < a <= t)
        assert decision.admitted == (in_window < max_)  # greedy: refuses only when actually full
        if decision.admitted:
            admitted.append(t)
        else:
            assert decision.retry_at_ms is not None and decision.retry_at_ms > T0 + t
    for start in range(-window, 10_000 + 1):
        assert sum(1 for a in admitted if start <= a < start + window) <= max_


def test_several_rules_report_the_binding_one(limits: Limits) -> None:
    rules = (job_rule(2, 10_000), key_rule("acme", 1, 1_000))
    assert limits.acquire(req("r1", rules=rules), now_ms=T0).admitted
    refused = limits.acquire(req("r2", rules=rules), now_ms=T0 + 100)
    assert (refused.retry_at_ms, refused.limit["name"]) == (T0 + 1_000, "customer")
    assert limits.acquire(req("r2", rules=rules), now_ms=T0 + 1_000).admitted
    # Both refuse: job until T0 + 10 000, customer until T0 + 2 000; every limit must have room.
    both = limits.acquire(req("r3", rules=rules), now_ms=T0 + 1_100)
    assert (both.retry_at_ms, both.limit["name"]) == (T0 + 10_000, "job")
    # Another customer value is a separate log.
    assert limits.acquire(req("r4", rules=(key_rule("other", 1, 1_000),)), now_ms=T0 + 1_100).admitted


def test_rules_sharing_a_zset_keep_the_longest_window(limits: Limits) -> None:
    short, long_ = key_rule("acme", 3, 1_000), key_rule("acme", 4, 10_000)
    for i, t in enumerate((0, 100, 200, 300)):
        assert limits.acquire(req(f"r{i}", rules=(short, long_)), now_ms=T0 + t * 10).admitted
    # The short rule's trim must not erase marks the long rule still counts.
    refused = limits.acquire(req("x", rules=(short, long_)), now_ms=T0 + 5_000)
    assert refused.retry_at_ms == T0 + 10_000


def test_every_key_gets_a_ttl(limits: Limits, redis_client: redis_lib.Redis) -> None:
    rules = (job_rule(5, 2_000), key_rule("acme", 5, 3_000))
    assert limits.acquire(req("r1", max_concurrency=3, key="k", per_key=2, lease_ms=4_000, rules=rules)).admitted
    keys = [redis_keys.concurrency_job(JOB), redis_keys.concurrency_key(JOB, "k"), *(r.key for r in rules)]
    ttls = [redis_client.pttl(k) for k in keys]
    assert all(t > 0 for t in ttls), dict(zip(keys, ttls, strict=True))
    assert 3_000 < ttls[0] <= 5_000 and 2_000 < ttls[3] <= 4_000
    assert limits.extend("r1", JOB, "k", 60_000)
    assert redis_client.pttl(keys[0]) > 59_000 and redis_client.pttl(keys[1]) > 59_000


# --- rule lookup ---------------------------------------------------------------------------------------

def test_rate_rules_for_lookup_order_and_formatting() -> None:
    entries: list[dict[str, object]] = [{"name": n, "max": 2, "window_secs": 5}
                                        for n in ("m", "t", "p", "i", "f", "b", "o", "missing")]
    rules = rate_rules_for(JOB, 10, 60, entries, metadata={"m": "meta", "t": "meta-t"},
                           tags={"t": "tag", "m": "not-used"},
                           payload={"m": "x", "t": "x", "p": "pay", "i": 42, "f": 1.5, "b": True, "o": {"a": 1}})
    assert rules[0] == RateRule(redis_keys.rate_job(JOB), 10, 60_000, "job")
    got = {r.name: r.key for r in rules[1:]}
    assert got == {"m": redis_keys.rate_key(JOB, "m", "meta"), "t": redis_keys.rate_key(JOB, "t", "meta-t"),
                   "p": redis_keys.rate_key(JOB, "p", "pay"), "i": redis_keys.rate_key(JOB, "i", "42"),
                   "f": redis_keys.rate_key(JOB, "f", "1.5")}
    assert all(r.max == 2 and r.window_ms == 5_000 for r in rules[1:])
    tag_only = rate_rules_for(JOB, None, None, entries[1:2], {}, {"t": "tag"}, None)
    assert tag_only == (RateRule(redis_keys.rate_key(JOB, "t", "tag"), 2, 5_000, "t"),)


def test_rate_rules_for_job_rule_needs_both_and_long_values_hash() -> None:
    assert rate_rules_for(JOB, 10, None, [], {}, {}, None) == ()
    assert rate_rules_for(JOB, 0, 60, [], {}, {}, None) == ()
    (rule,) = rate_rules_for(JOB, None, None, [{"name": "p", "max": 1, "window_secs": 1}], {}, {},
                             {"p": "v" * 10_000})
    assert rule.key.startswith(redis_keys.rate_key(JOB, "p", "sha256:")) and len(rule.key) < 200


# --- threads -------------------------------------------------------------------------------------------

def test_sixteen_threads_never_exceed_max_concurrency(limits: Limits) -> None:
    lock = threading.Lock()
    holders = 0
    peak = 0
    admitted = 0
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        nonlocal holders, peak, admitted
        try:
            for i in range(40):
                run = f"t{n}-{i}"
                if not limits.acquire(req(run, max_concurrency=3)).admitted:
                    time.sleep(0.001)
                    continue
                with lock:
                    holders += 1
                    admitted += 1
                    peak = max(peak, holders)
                time.sleep(0.002)
                with lock:
                    holders -= 1  # stop counting before the slot is freed
                limits.release(run, JOB, None)
        except BaseException as exc:  # surface thread failures in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert 1 <= peak <= 3
    assert admitted >= 3
    assert limits.slots_in_use(JOB) == 0


# --- slot waiters and hand-over ------------------------------------------------------------------------

def test_concurrency_refusal_registers_a_waiter_in_the_same_script(limits: Limits,
                                                                   redis_client: redis_lib.Redis) -> None:
    assert limits.acquire(req("a", max_concurrency=1, key="k", per_key=1), now_ms=T0).admitted
    job_full = LimitRequest(run_id="b", job_id=JOB, max_concurrency=1, concurrency_key=None,
                            max_concurrency_per_key=None, lease_ms=60_000, waiter_priority=3)
    assert not limits.acquire(job_full, now_ms=T0 + 10).admitted
    assert redis_client.zscore(redis_keys.slot_waiters_job(JOB), "b") == -3 * 10**13 + T0 + 10
    assert not limits.acquire(job_full, now_ms=T0 + 99).admitted  # refused again: keeps its place
    assert redis_client.zscore(redis_keys.slot_waiters_job(JOB), "b") == -3 * 10**13 + T0 + 10
    assert 86_000 < redis_client.ttl(redis_keys.slot_waiters_job(JOB)) <= 86_400
    key_full = LimitRequest(run_id="c", job_id=JOB, max_concurrency=5, concurrency_key="k",
                            max_concurrency_per_key=1, lease_ms=60_000, waiter_priority=0)
    assert not limits.acquire(key_full, now_ms=T0 + 20).admitted
    assert redis_client.zrange(redis_keys.slot_waiters_key(JOB, "k"), 0, -1) == [b"c"]
    no_register = req("d", max_concurrency=1)
    assert not limits.acquire(no_register, now_ms=T0 + 30).admitted
    assert redis_client.zcard(redis_keys.slot_waiters_job(JOB)) == 1
    limits.release("a", JOB, "k")
    assert limits.acquire(job_full, now_ms=T0 + 40).admitted  # admission removes it from the waiters
    assert redis_client.zcard(redis_keys.slot_waiters_job(JOB)) == 0
    # A refusal by a rate limit registers no waiter: the run knows when it may go.
    limited = LimitRequest(run_id="e", job_id=JOB, max_concurrency=None, concurrency_key=None,
                           max_concurrency_per_key=None, lease_ms=60_000, rate_rules=(job_rule(1, 60_000),),
                           waiter_priority=0)
    assert limits.acquire(limited, now_ms=T0 + 50).admitted
    assert limits.acquire(replace(limited, run_id="f"), now_ms=T0 + 60).reason == "rate_limit"
    assert not redis_client.exists(redis_keys.slot_waiters_job(JOB))


def test_end_attempt_pops_the_best_waiter_and_keeps_the_leases(limits: Limits) -> None:
    assert limits.acquire(req("a", max_concurrency=1, key="k", per_key=1)).admitted
    for run_id, key, priority in (("w-job", None, 0), ("w-key", "k", 5)):
        waiting = LimitRequest(run_id=run_id, job_id=JOB, max_concurrency=1, concurrency_key=key,
                               max_concurrency_per_key=1, lease_ms=60_000, waiter_priority=priority)
        assert not limits.acquire(waiting).admitted
    assert limits.end_attempt("a", JOB, "k", hand_over=True) == "w-key"  # higher priority, either set
    assert limits.slots_in_use(JOB) == 1 and limits.slots_in_use(JOB, "k") == 1  # kept for the hand-over
    assert limits.end_attempt("a", JOB, "k", hand_over=False) is None  # release: leases dropped
    assert limits.slots_in_use(JOB) == 0 and limits.slots_in_use(JOB, "k") == 0
    assert limits.end_attempt("x", JOB, None, hand_over=True) == "w-job"
    assert limits.end_attempt("x", JOB, None, hand_over=True) is None  # nobody waits: released


def test_hand_over_passes_the_slot_without_it_ever_being_free(limits: Limits) -> None:
    assert limits.acquire(req("a", max_concurrency=1, key="k1", per_key=1)).admitted
    assert not limits.acquire(req("w", max_concurrency=1, key="k1", per_key=1)).admitted
    handed = LimitRequest(run_id="w", job_id=JOB, max_concurrency=1, concurrency_key="k1",
                          max_concurrency_per_key=1, lease_ms=60_000, hand_over=("a", "k1"))
    assert limits.acquire(handed).admitted
    assert limits.slots_in_use(JOB) == 1 and limits.slots_in_use(JOB, "k1") == 1
    assert not limits.acquire(req("z", max_concurrency=1)).admitted  # the slot never went back to the pool
    # A hand-over the receiver's own limits refuse still drops the ended attempt's leases.
    assert limits.acquire(req("b", max_concurrency=3, key="k2", per_key=1)).admitted
    refused = LimitRequest(run_id="v", job_id=JOB, max_concurrency=3, concurrency_key="k2",
                           max_concurrency_per_key=1, lease_ms=60_000, hand_over=("w", "k1"))
    assert not limits.acquire(refused).admitted
    assert limits.slots_in_use(JOB) == 1 and limits.slots_in_use(JOB, "k1") == 0


def test_an_admission_is_roomy_while_every_cap_is_at_most_a_quarter_used(limits: Limits,
                                                                         redis_client: redis_lib.Redis) -> None:
    assert limits.acquire(req("r1", max_concurrency=8), now_ms=T0).roomy  # 1 of 8 in use
    assert limits.acquire(req("r2", max_concurrency=8), now_ms=T0).roomy  # 2 of 8
    assert not limits.acquire(req("r3", max_concurrency=8), now_ms=T0).roomy  # 3 of 8
    assert not limits.acquire(req("k1", key="a", per_key=2), now_ms=T0).roomy  # 1 of 2 for key "a"
    assert limits.acquire(req("n1", rules=(job_rule(1000, 1000),)), now_ms=T0).roomy  # rate limits only
    redis_client.zadd(redis_keys.slot_waiters_job(JOB), {"waiting": 1})
    assert not limits.acquire(req("n2", rules=(job_rule(1000, 1000),)), now_ms=T0).roomy  # someone waits


def test_rate_key_names_and_values_never_share_a_log() -> None:
    """A ``:`` (or ``%``) in an entry's name cannot make two (name, value) pairs one sliding log."""
    pairs = [("a:b", "c"), ("a", "b:c"), ("a%3Ab", "c"), ("a%b", "c"), ("a%25b", "c"), ("a", "b%3Ac")]
    keys = [redis_keys.rate_key(JOB, name, value) for name, value in pairs]
    assert len(set(keys)) == len(pairs)
    assert redis_keys.rate_key(JOB, "customer", "acme:eu") == f"sluice:rate:key:{JOB}:customer:acme:eu"
    rules = rate_rules_for(JOB, None, None, [{"name": "a:b", "max": 1, "window_secs": 60},
                                             {"name": "a", "max": 1, "window_secs": 60}],
                           metadata={"a:b": "c", "a": "b:c"}, tags={}, payload=None)
    assert len({rule.key for rule in rules}) == 2
