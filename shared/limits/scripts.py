"""Lua scripts behind ``shared.limits.limiter``: concurrency leases and sliding-log rate limits (§5.8, §5.9).

Each script is a named constant with a KEYS/ARGV header; ``shared.limits.limiter.Limits`` registers them once
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

# Slot waiter sets (shared.limits.waiters): score = -priority × weight + refusal ms, so priority dominates the
# refusal time (> any unix ms until the year 2286); TTL refreshed on every add.
PRIORITY_WEIGHT = 10**13
WAITER_TTL_SECS = 86_400

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
local WAITER_PRIORITY_WEIGHT = {PRIORITY_WEIGHT}
local WAITER_TTL_SECS = {WAITER_TTL_SECS}
-- A lease ZSET lives until its latest lease expires (+ margin): PEXPIRE from the highest score.
local function expire_leases(key)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIRE', key, int(math.max(tonumber(top[2]) - now, 1) + TTL_MARGIN_MS))
  end
end
""".replace("{PRIORITY_WEIGHT}", str(PRIORITY_WEIGHT)).replace("{WAITER_TTL_SECS}", str(WAITER_TTL_SECS))

# Acquire: concurrency leases (job + per-key) and every rate rule, all-or-nothing.
# Checks run first (purging expired leases / trimming old marks is housekeeping, not recording); only when
# everything admits are the leases and the start marks written. The job lease is recorded even when
# max_concurrency is unlimited, so slots_in_use is meaningful and lowering a limit counts runs in flight.
# A run already holding a lease does not count against itself (idempotent re-acquire refreshes it), but
# every admitted acquire records rate marks: a start is a start.
# Hand-over: when ARGV[9] names a run (the same job's attempt that just ended, shared.limits.waiters), its
# leases are dropped first, unconditionally, so its slot passes to this run without ever being seen free.
# Waiters: a concurrency refusal adds the run to the refusing cap's waiter set in the same script (ZADD NX,
# so a run refused again keeps its place; TTL refreshed), so no release can miss it; an admission removes
# it from both waiter sets.
# KEYS: job_lease_zset, job_waiter_zset, [key_lease_zset, key_waiter_zset if ARGV[5] == '1'],
#       [released run's key_lease_zset if ARGV[10] == '1'], rate_zset_1 .. rate_zset_n
# ARGV: now_ms_override|'', run_id, lease_ms, job_max (0 = unlimited), has_key ('1'|'0'),
#       key_max (0 = unlimited), mark_token, waiter priority ('' = do not register), released run id|'',
#       released run has a key lease ('1'|'0'), then per rule: max, window_ms, trim_ms
#       (trim_ms = largest window among rules sharing that ZSET, so one rule never trims another's marks)
# Returns {status, rule_index, value, now_ms}:
#   0 admitted (value = 1 when roomy: every cap at most a quarter used and no slot waiters, else 0)
#   1 job concurrency refused (value = in_use) | 2 per-key refused (value = in_use)
#   3 rate refused (rule_index = 1-based binding rule, value = retry_at_ms)
ACQUIRE_SCRIPT = _PRELUDE + """
local run_id = ARGV[2]
local expiry = now + tonumber(ARGV[3])
local has_key = ARGV[5] == '1'
local first_rate = has_key and 5 or 3

if ARGV[9] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[9])
  if ARGV[10] == '1' then
    redis.call('ZREM', KEYS[first_rate], ARGV[9])
    first_rate = first_rate + 1
  end
end

-- Live leases held by other runs (this run's own lease is a refresh, not an extra slot).
local function others(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
  local n = redis.call('ZCARD', key)
  if redis.call('ZSCORE', key, run_id) then n = n - 1 end
  return n
end

local function wait_in(key)
  if ARGV[8] ~= '' then
    redis.call('ZADD', key, 'NX', int(-tonumber(ARGV[8]) * WAITER_PRIORITY_WEIGHT + now), run_id)
    redis.call('EXPIRE', key, WAITER_TTL_SECS)
  end
end

local job_max = tonumber(ARGV[4])
local in_use = others(KEYS[1])
if job_max > 0 and in_use >= job_max then
  wait_in(KEYS[2])
  return {1, 0, in_use, now}
end

local key_max, key_in_use = 0, 0
if has_key then
  key_max = tonumber(ARGV[6])
  key_in_use = others(KEYS[3])
  if key_max > 0 and key_in_use >= key_max then
    wait_in(KEYS[4])
    return {2, 0, key_in_use, now}
  end
end

local retry_at, binding = 0, 0
for i = first_rate, #KEYS do
  local a = 11 + (i - first_rate) * 3
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
redis.call('ZREM', KEYS[2], run_id)
if has_key then
  redis.call('ZADD', KEYS[3], int(expiry), run_id)
  expire_leases(KEYS[3])
  redis.call('ZREM', KEYS[4], run_id)
end
local member = run_id .. ':' .. int(now) .. ':' .. ARGV[7]
for i = first_rate, #KEYS do
  local trim = tonumber(ARGV[11 + (i - first_rate) * 3 + 2])
  redis.call('ZADD', KEYS[i], int(now), member)
  redis.call('PEXPIRE', KEYS[i], int(trim + TTL_MARGIN_MS))
end
-- Roomy: after this start every cap is at most a quarter used and nobody waits for a slot, so releasing
-- this attempt's leases a little late cannot keep anyone from one.
local roomy = 1
if (job_max > 0 and (in_use + 1) * 4 > job_max) or redis.call('ZCARD', KEYS[2]) > 0 then roomy = 0 end
if has_key and ((key_max > 0 and (key_in_use + 1) * 4 > key_max) or redis.call('ZCARD', KEYS[4]) > 0) then
  roomy = 0
end
return {0, 0, roomy, now}
"""

# Release, or hand over: the end of an attempt (after its outcome is committed).
# With ARGV[2] == '1' and a run waiting in either waiter set, the best waiter (lowest score, i.e. highest
# priority, then the longest waiting) is popped and the ending run's leases are KEPT: the caller starts the
# waiter with ACQUIRE's hand-over, which drops them atomically. Otherwise the leases are dropped.
# KEYS: job_lease_zset, job_waiter_zset, [key_lease_zset, key_waiter_zset]
# ARGV: run_id, pop ('1'|'0')
# Returns {} (leases dropped) or {member, score} (a waiter popped, leases kept).
RELEASE_SCRIPT = """
local run_id = ARGV[1]
if ARGV[2] == '1' then
  local best, best_score, best_set
  for i = 2, #KEYS, 2 do
    redis.call('ZREM', KEYS[i], run_id)  -- never hand a slot to its own holder
    local head = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    if head[1] and (best == nil or tonumber(head[2]) < best_score) then
      best, best_score, best_set = head[1], tonumber(head[2]), KEYS[i]
    end
  end
  if best then
    redis.call('ZREM', best_set, best)
    return {best, string.format('%d', best_score)}
  end
end
for i = 1, #KEYS, 2 do redis.call('ZREM', KEYS[i], run_id) end
return {}
"""

# Extend: push held leases to now + lease_ms (never shorten). A lease that is gone (Redis lost it: a restart
# without persistence, a flush, eviction) is recreated when ARGV[4] is '1': the caller has just confirmed the
# attempt is still running, so it counts again. That may put a cap over its limit for a while, which only
# refuses new starts until running attempts end: a real attempt is never left uncounted.
# KEYS: job_lease_zset, [key_lease_zset]
# ARGV: now_ms_override|'', run_id, lease_ms, recreate ('1'|'0')
# Returns 1 if every lease was still present, else 0.
EXTEND_SCRIPT = _PRELUDE + """
local run_id = ARGV[2]
local expiry = now + tonumber(ARGV[3])
local recreate = ARGV[4] == '1'
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
    if recreate then
      redis.call('ZADD', KEYS[i], int(expiry), run_id)
      expire_leases(KEYS[i])
    end
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
