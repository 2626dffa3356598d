"""Lua scripts behind ``shared.limits``: concurrency leases and sliding-log rate limits (§5.8, §5.9).

Each script is a named constant with a KEYS/ARGV header; ``shared.limits.Limits`` registers them once
(``redis.register_script``) and calls them with EVALSHA, so every operation is one round trip.

Clock: every script reads the Redis server clock (``TIME``) so all workers share one clock; ARGV[1] may
override it (non-empty string = ms) for deterministic tests. Redis 7 replicates script effects, so calling
``TIME`` before writes is allowed.

Conventions shared by all scripts:
- A lease (ZSET member run_id, score = expiry ms) is live while ``now < expiry``; expired ones are purged
  (score <= now) before counting.
- A start mark at ``t`` occupies the half-open interval ``[t, t + window)``: marks with score
  ``<= now - window`` no longer count, so a refused run may start exactly at ``oldest + window``.
- Integers are formatted with ``%d`` before reaching Redis: Lua's default number format (``%.14g``)
  would switch to exponent notation for large values.
"""

from __future__ import annotations

# Shared Lua prelude: the clock, integer formatting and the lease ZSET TTL rule.
# The TTL margin (1 s) keeps a ZSET alive slightly past its last lease / its window, never shorter.
_PRELUDE = """
local function int(x) return string.format('%d', x) end
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local TTL_MARGIN_MS = 1000
-- A lease ZSET lives until its latest lease expires (+ margin): PEXPIRE from the highest score.
local function expire_leases(key)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIRE', key, int(math.max(tonumber(top[2]) - now, 1) + TTL_MARGIN_MS))
  end
end
"""

# Acquire: concurrency leases (job + per-key) and every rate rule, all-or-nothing.
# Checks run first (purging expired leases / trimming old marks is housekeeping, not recording); only when
# everything admits are the leases and the start marks written. The job lease is recorded even when
# max_concurrency is unlimited, so slots_in_use is meaningful and lowering a limit counts runs in flight.
# A run already holding a lease does not count against itself (idempotent re-acquire refreshes it), but
# every admitted acquire records rate marks: a start is a start.
# KEYS: job_lease_zset, [key_lease_zset if ARGV[5] == '1'], rate_zset_1 .. rate_zset_n
# ARGV: now_ms_override|'', run_id, lease_ms, job_max (0 = unlimited), has_key ('1'|'0'),
#       key_max (0 = unlimited), mark_token, then per rule: max, window_ms, trim_ms
#       (trim_ms = largest window among rules sharing that ZSET, so one rule never trims another's marks)
# Returns {status, rule_index, value, now_ms}:
#   0 admitted | 1 job concurrency refused (value = in_use) | 2 per-key refused (value = in_use)
#   3 rate refused (rule_index = 1-based binding rule, value = retry_at_ms)
ACQUIRE_SCRIPT = _PRELUDE + """
local run_id = ARGV[2]
local expiry = now + tonumber(ARGV[3])
local has_key = ARGV[5] == '1'

-- Live leases held by other runs (this run's own lease is a refresh, not an extra slot).
local function others(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
  local n = redis.call('ZCARD', key)
  if redis.call('ZSCORE', key, run_id) then n = n - 1 end
  return n
end

local job_max = tonumber(ARGV[4])
local in_use = others(KEYS[1])
if job_max > 0 and in_use >= job_max then return {1, 0, in_use, now} end

local first_rate = 2
if has_key then
  first_rate = 3
  local key_max = tonumber(ARGV[6])
  local key_in_use = others(KEYS[2])
  if key_max > 0 and key_in_use >= key_max then return {2, 0, key_in_use, now} end
end

local retry_at, binding = 0, 0
for i = first_rate, #KEYS do
  local a = 8 + (i - first_rate) * 3
  local max, window, trim = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', int(now - trim))
  local lower = '(' .. int(now - window)
  local count = redis.call('ZCOUNT', KEYS[i], lower, '+inf')
  if count >= max then
    -- Room returns when the (count - max + 1)-th oldest mark in the window leaves it.
    local mark = redis.call('ZRANGEBYSCORE', KEYS[i], lower, '+inf', 'WITHSCORES', 'LIMIT', count - max, 1)
    local at = math.max(tonumber(mark[2]) + window, now)
    if at > retry_at then retry_at, binding = at, i - first_rate + 1 end
  end
end
if binding > 0 then return {3, binding, retry_at, now} end

redis.call('ZADD', KEYS[1], int(expiry), run_id)
expire_leases(KEYS[1])
if has_key then
  redis.call('ZADD', KEYS[2], int(expiry), run_id)
  expire_leases(KEYS[2])
end
local member = run_id .. ':' .. int(now) .. ':' .. ARGV[7]
for i = first_rate, #KEYS do
  local trim = tonumber(ARGV[8 + (i - first_rate) * 3 + 2])
  redis.call('ZADD', KEYS[i], int(now), member)
  redis.call('PEXPIRE', KEYS[i], int(trim + TTL_MARGIN_MS))
end
return {0, 0, 0, now}
"""

# Extend: push held leases to now + lease_ms (never shorten). A lease that is gone (released, or expired
# and purged because another run took the slot) is NOT recreated: that could exceed the cap.
# KEYS: job_lease_zset, [key_lease_zset]
# ARGV: now_ms_override|'', run_id, lease_ms
# Returns 1 if every lease was still present, else 0.
EXTEND_SCRIPT = _PRELUDE + """
local run_id = ARGV[2]
local expiry = now + tonumber(ARGV[3])
local held = 1
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], run_id)
  if score then
    if expiry > tonumber(score) then
      redis.call('ZADD', KEYS[i], 'XX', int(expiry), run_id)
      expire_leases(KEYS[i])
    end
  else
    held = 0
  end
end
return held
"""

# Count live leases (read-only: counts score > now instead of purging).
# KEYS: lease_zset
# ARGV: now_ms_override|''
# Returns the number of live leases.
COUNT_SCRIPT = _PRELUDE + """
return redis.call('ZCOUNT', KEYS[1], '(' .. int(now), '+inf')
"""
