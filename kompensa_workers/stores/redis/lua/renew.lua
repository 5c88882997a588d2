-- renew: the heartbeat. Extends the lease to ttl from now (never shortens it: a
-- commit may have stretched it for a delayed retry) and reports cancellation.
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset: execution key -> lease deadline, ms)
-- ARGV[1] - execution key
-- ARGV[2] - lease token
-- ARGV[3] - fencing token
-- ARGV[4] - lease ttl, ms
-- returns {1, cancel_flag} or {0, reason} when the lease is not held

local journal, index = KEYS[1], KEYS[2]
local head = redis.call('HMGET', journal, 'lease_token', 'fence', 'lease_until', 'cancel')
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if not head[1] then return {0, 'no lease is held'} end
if head[1] ~= ARGV[2] or head[2] ~= ARGV[3] then return {0, 'another worker took the lease over'} end
if tonumber(head[3]) <= now then return {0, 'the lease expired'} end
local deadline = math.max(tonumber(head[3]), now + tonumber(ARGV[4]))
redis.call('HSET', journal, 'lease_until', deadline)
redis.call('ZADD', index, deadline, ARGV[1])
return {1, head[4] or '0'}
