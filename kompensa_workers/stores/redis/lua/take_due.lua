-- take_due: of the given executions of one partition (those `due` listed), the
-- ones still due, which recovery re-dispatches. Each one returned is held back
-- from the next take_due for hold * 2^(n-1) (at most max_hold), n counting the
-- re-dispatches since its last claim: concurrent recoverers do not both send it,
-- and a backed-up queue is not flooded with copies.
--
-- KEYS[1] - the partition's recovery index (zset: execution key -> lease deadline, ms)
-- KEYS[2] - its re-dispatches since the last claim (hash: execution key -> count)
-- ARGV[1] - hold, ms
-- ARGV[2] - max hold, ms
-- ARGV[3..] - execution keys
-- returns {key, ...}: those taken, in the order given

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local taken = {}
for i = 3, #ARGV do
  local key = ARGV[i]
  local deadline = redis.call('ZSCORE', KEYS[1], key)
  if deadline and tonumber(deadline) <= now then
    local sent = redis.call('HINCRBY', KEYS[2], key, 1)
    local hold = math.min(tonumber(ARGV[1]) * 2 ^ (sent - 1), tonumber(ARGV[2]))
    redis.call('ZADD', KEYS[1], now + hold, key)
    table.insert(taken, key)
  end
end
return taken
