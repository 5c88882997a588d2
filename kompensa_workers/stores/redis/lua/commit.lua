-- commit: one fenced journal write.
-- Refused unless the caller holds the lease it was granted: same token, same
-- fencing token, not expired by the server's clock. A retried write (same
-- write id) that already landed is acknowledged, not applied twice.
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset: execution key -> lease deadline, ms)
-- ARGV[1] - execution key (its member in the index)
-- ARGV[2] - lease token
-- ARGV[3] - fencing token
-- ARGV[4] - write id
-- ARGV[5] - new status ('' keeps it)
-- ARGV[6] - update time for display (client clock, seconds)
-- ARGV[7] - stretch the lease to this many ms from now ('' keeps it)
-- ARGV[8] - '1' releases the lease (finish), else '0'
-- ARGV[9] - retention of an expiring terminal record, ms
-- ARGV[10..] - field, value pairs (step:<name>, result, error)
-- returns {1, cancel_flag} on success
--         {0, reason} when the lease is not held ('no lease', 'taken over', 'expired')

local journal, index = KEYS[1], KEYS[2]
local key, token, fence, write_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local head = redis.call('HMGET', journal, 'last_write', 'cancel', 'lease_token',
                        'fence', 'lease_until')
if head[1] == write_id then
  return {1, head[2] or '0'}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if not head[3] then return {0, 'no lease is held'} end
if head[3] ~= token or head[4] ~= fence then return {0, 'another worker took the lease over'} end
if tonumber(head[5]) <= now then return {0, 'the lease expired'} end

for first = 10, #ARGV, 512 do  -- in chunks: unpack() is limited by the Lua stack
  redis.call('HSET', journal, unpack(ARGV, first, math.min(first + 511, #ARGV)))
end
redis.call('HSET', journal, 'updated_at', ARGV[6], 'stalled', 0, 'last_write', write_id)
local status = ARGV[5]
if status ~= '' then
  redis.call('HSET', journal, 'status', status)
end
if ARGV[8] == '1' then
  redis.call('HDEL', journal, 'lease_token', 'lease_until')
  redis.call('HSET', journal, 'open', 0)
elseif ARGV[7] ~= '' then
  local deadline = now + tonumber(ARGV[7])
  redis.call('HSET', journal, 'lease_until', deadline, 'open', 0)
  redis.call('ZADD', index, deadline, key)
end
status = redis.call('HGET', journal, 'status')
if status == 'succeeded' or status == 'compensated' or status == 'cancelled' then
  redis.call('ZREM', index, key)
  redis.call('PEXPIRE', journal, ARGV[9])
elseif status == 'compensation_failed' then  -- waits for a person: never expires
  redis.call('ZREM', index, key)
elseif ARGV[8] == '1' then  -- released but not finished: recoverable at once
  redis.call('ZADD', index, now, key)
end
return {1, redis.call('HGET', journal, 'cancel') or '0'}
