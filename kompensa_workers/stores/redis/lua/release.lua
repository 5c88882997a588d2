-- release: free the lease of a delivery that is dying (KeyboardInterrupt,
-- SystemExit) without recording anything: the next claim counts the grant as
-- lost, exactly as after a crash, but need not wait for the lease to expire.
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset: execution key -> lease deadline, ms)
-- ARGV[1] - execution key
-- ARGV[2] - lease token
-- returns 1 if the lease was released, 0 if this token no longer held it

local journal, index = KEYS[1], KEYS[2]
if redis.call('HGET', journal, 'lease_token') ~= ARGV[2] then
  return 0
end
redis.call('HDEL', journal, 'lease_token', 'lease_until')
local clock = redis.call('TIME')
redis.call('ZADD', index, tonumber(clock[1]) * 1000, ARGV[1])
return 1
