-- take_due: the executions recovery should re-dispatch, held back from the next
-- take_due for a while so that concurrent recoverers do not both send them.
--
-- KEYS[1] - the recovery index (zset: execution key -> lease deadline, ms)
-- ARGV[1] - how many at most
-- ARGV[2] - hold, ms: the next deadline given to each key returned
-- returns {key, ...}, oldest deadline first

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, key in ipairs(due) do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), key)
end
return due
