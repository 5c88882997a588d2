-- reopen: an operator's write to a compensation_failed execution, applied in one
-- step with the status check: its failed compensations owed again (status
-- compensating, due for recovery at once) or marked resolved (a final status).
-- No lease is taken and no delivery is counted.
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset)
-- ARGV[1] - execution key (its member in the index)
-- ARGV[2] - new status
-- ARGV[3] - update time for display (client clock, seconds)
-- ARGV[4] - retention of an expiring terminal record, ms
-- ARGV[5..] - field, value pairs (step:<name>, error)
-- returns 1 if applied, 0 if there is no such execution or it is not
-- compensation_failed

if redis.call('HGET', KEYS[1], 'status') ~= 'compensation_failed' then
  return 0
end
for first = 5, #ARGV, 512 do
  redis.call('HSET', KEYS[1], unpack(ARGV, first, math.min(first + 511, #ARGV)))
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3], 'open', 0,
           'stalled', 0)
redis.call('HDEL', KEYS[1], 'lease_token', 'lease_until')
if ARGV[2] == 'compensating' then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  redis.call('ZADD', KEYS[2], now, ARGV[1])  -- recoverable at once
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
