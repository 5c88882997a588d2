-- take_due: the executions recovery should re-dispatch. Each one returned is held
-- back from the next take_due for hold * 2^(n-1) (at most max_hold), n counting the
-- re-dispatches since its last claim: concurrent recoverers do not both send it, and
-- a backed-up queue is not flooded with copies.
--
-- KEYS[1] - the recovery index (zset: execution key -> lease deadline, ms)
-- KEYS[2] - re-dispatches since the last claim (hash: execution key -> count)
-- ARGV[1] - how many at most
-- ARGV[2] - hold, ms
-- ARGV[3] - max hold, ms
-- returns {key, ...}, oldest deadline first

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, key in ipairs(due) do
  local sent = redis.call('HINCRBY', KEYS[2], key, 1)
  local hold = math.min(tonumber(ARGV[2]) * 2 ^ (sent - 1), tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[1], now + hold, key)
end
return due
