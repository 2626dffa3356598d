"""The lease of an attempt of a job without limits, recorded in one cheap Redis call (CONTRACT §5.8).

Every executing attempt holds a lease (``shared.redis_keys.concurrency_job``/``concurrency_key``), even in a
job without limits, so a limit added later counts the attempts in flight. For such a job nothing can be
refused, so ``shared.limits.limiter.Limits.acquire``'s checks are moot and only its recording half is needed: the
script below writes exactly what an admitted ``acquire`` writes for a request with no limits — the lease(s)
with expiry = Redis now + ``lease_ms``, the lease ZSET's TTL from its latest lease, and the run dropped from
the slot-waiter sets it may still be in.

It is sent on the worker's per-thread script connection (``shared.limits.thread_scripts``).
"""

from __future__ import annotations

from shared import redis_keys
from shared.limits.thread_scripts import LuaScript, ThreadScripts

# KEYS: job lease ZSET, job waiter set, [key lease ZSET, key waiter set]. ARGV: run_id, lease_ms.
# Returns the Redis clock (ms) the lease was dated with.
LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = string.format('%d', now + tonumber(ARGV[2]))
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i], expiry, ARGV[1])
  local top = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[i], string.format('%d', math.max(tonumber(top[2]) - now, 1) + 1000))
  redis.call('ZREM', KEYS[i + 1], ARGV[1])
end
return now
"""
_LEASE = LuaScript(LEASE_SCRIPT)


class LeaseWriter:
    """Records unconditional leases (jobs without limits); thread-safe."""

    def __init__(self, scripts: ThreadScripts) -> None:
        self._scripts = scripts

    def record(self, run_id: str, job_id: str, concurrency_key: str | None, lease_ms: int) -> int:
        """Write the attempt's lease(s); returns the Redis clock (ms) used."""
        keys = [redis_keys.concurrency_job(job_id), redis_keys.slot_waiters_job(job_id)]
        if concurrency_key:
            keys += [redis_keys.concurrency_key(job_id, concurrency_key),
                     redis_keys.slot_waiters_key(job_id, concurrency_key)]
        return int(self._scripts.run(_LEASE, keys, [run_id, lease_ms]))
