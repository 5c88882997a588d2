-- due: executions of one partition whose lease deadline has passed by the
-- server's clock: their delivery died or its delayed message never came back
-- (recovery re-dispatches them).
--
-- KEYS[1] - the partition's recovery index (zset: execution key -> lease deadline, ms)
-- ARGV[1] - how many at most
-- returns {key, deadline, ...}, oldest deadline first

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
                  tonumber(ARGV[1]))
