-- take_scheduled: the messages of one partition whose time has come, taken (each
-- is returned to one caller only; a caller that dies before sending it leaves
-- the execution to recovery, which finds its lease expired).
--
-- KEYS[1] - the partition's timers (zset: timer id -> due time, ms)
-- KEYS[2] - their messages (hash: timer id -> message)
-- ARGV[1] - how many at most
-- returns {message, ...}, earliest first

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local taken = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local message = redis.call('HGET', KEYS[2], id)
  redis.call('HDEL', KEYS[2], id)
  if message then table.insert(taken, message) end
end
return taken
