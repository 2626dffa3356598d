"""The Lua scripts of the message seam (``shared.messages``): each writes exactly what dramatiq's own
``dispatch.lua`` commands write, for many messages in one atomic call.
"""

from __future__ import annotations

ENQUEUE_CHUNK = 500  # messages per HSET / RPUSH inside the enqueue script (Lua's unpack has a stack limit)

# KEYS: the queue list, the queue's message hash, the queue's wake list.
# ARGV: wake tokens to push (capped at WAKE_TOKENS_MAX), WAKE_TOKENS_MAX, WAKE_TTL_MS, then message id, message data...
# Writes what dramatiq.lua's ``enqueue`` writes for each message, and the wake tokens, in one atomic step.
ENQUEUE_SCRIPT = f"""
local n = (#ARGV - 3) / 2
local first = 4
while first <= #ARGV do
  local last = math.min(first + {2 * ENQUEUE_CHUNK} - 1, #ARGV)
  local fields, ids = {{}}, {{}}
  for i = first, last, 2 do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
    ids[#ids + 1] = ARGV[i]
  end
  redis.call('hset', KEYS[2], unpack(fields))
  redis.call('rpush', KEYS[1], unpack(ids))
  first = last + 1
end
local cap = tonumber(ARGV[2])
local tokens = {{}}
for i = 1, math.min(tonumber(ARGV[1]), cap) do
  tokens[i] = '1'
end
if #tokens > 0 then
  redis.call('lpush', KEYS[3], unpack(tokens))
  redis.call('ltrim', KEYS[3], 0, cap - 1)
  redis.call('pexpire', KEYS[3], ARGV[3])
end
return n
"""

# KEYS: the consumer's ack set for the queue, the queue's message hash, the heartbeats ZSET.
# ARGV: timestamp (ms), broker id, message ids... (dispatch.lua's ``ack``, once per id, one heartbeat)
ACK_MANY_SCRIPT = """
redis.call('zadd', KEYS[3], ARGV[1], ARGV[2])
for i = 3, #ARGV do
  if redis.call('srem', KEYS[1], ARGV[i]) > 0 then
    redis.call('hdel', KEYS[2], ARGV[i])
  end
end
return #ARGV - 2
"""
