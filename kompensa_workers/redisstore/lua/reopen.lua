-- reopen: a compensation_failed execution goes back to compensating, so the
-- compensations it still owes can be run again (or marked resolved by a person).
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset)
-- ARGV[1] - execution key (its member in the index)
-- returns 1 if reopened, 0 if there is no such execution or it is not
-- compensation_failed

if redis.call('HGET', KEYS[1], 'status') ~= 'compensation_failed' then
  return 0
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', 'compensating', 'open', 0)
redis.call('HDEL', KEYS[1], 'lease_token', 'lease_until')
redis.call('ZADD', KEYS[2], now, ARGV[1])  -- recoverable at once
return 1
