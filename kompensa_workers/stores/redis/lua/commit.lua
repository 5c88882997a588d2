-- commit: one fenced journal write.
-- Refused unless the caller holds the lease it was granted: same token, same
-- fencing token, not expired by the server's clock. A retried write (same write
-- id) that already landed is acknowledged, not applied twice.
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset: execution key -> lease deadline, ms)
-- ARGV[1] - execution key (its member in the index)
-- ARGV[2] - eight words, space-separated (one argument: fewer to send and parse):
--           lease token, fencing token, write id, new status ('-' keeps it),
--           update time for display (client clock, seconds), stretch the lease to
--           this many ms from now ('-' keeps it), '1' releases the lease (finish),
--           'c' releases it and compacts the record (below), else '0',
--           retention of an expiring terminal record (ms)
-- ARGV[3..] - field, value pairs (step:<name>, result, error, dispatch)
-- returns the cancel flag (0 or 1) on success, or when the lease is not held
--         -1 (no lease is held), -2 (another worker took it over), -3 (expired)

local journal, index = KEYS[1], KEYS[2]
local key = ARGV[1]
local token, fence, write_id, status, at, stretch, release, retention = string.match(
  ARGV[2], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
local head = redis.call('HMGET', journal, 'last_write', 'cancel', 'lease_token',
                        'fence', 'lease_until')
if head[1] == write_id then
  return tonumber(head[2] or '0')
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if not head[3] then return -1 end
if head[3] ~= token or head[4] ~= fence then return -2 end
if tonumber(head[5]) <= now then return -3 end

-- An end that trims the dispatch record may make the hash compact again (below).
local long_dispatch = release == 'c' and redis.call('HSTRLEN', journal, 'dispatch') > 64
-- The write's pairs with the bookkeeping, in one HSET when they are few (unpack()
-- is limited by the Lua stack: many are written in chunks first).
local last = 3
if #ARGV > 514 then
  for first = 3, #ARGV, 512 do
    redis.call('HSET', journal, unpack(ARGV, first, math.min(first + 511, #ARGV)))
  end
  last = #ARGV + 1  -- all written: none left for the HSET below
end
if status ~= '-' then
  redis.call('HSET', journal, 'updated_at', at, 'stalled', 0, 'last_write', write_id,
             'status', status, unpack(ARGV, last, #ARGV))
else
  redis.call('HSET', journal, 'updated_at', at, 'stalled', 0, 'last_write', write_id,
             unpack(ARGV, last, #ARGV))
  if release ~= '0' or stretch ~= '-' then  -- only an end or a hand-off asks
    status = redis.call('HGET', journal, 'status')
  end
end
if release == '1' or release == 'c' then
  redis.call('HDEL', journal, 'lease_token', 'lease_until')
  redis.call('HSET', journal, 'open', 0)
elseif stretch ~= '-' then
  local deadline = now + tonumber(stretch)
  redis.call('HSET', journal, 'lease_until', deadline, 'open', 0)
  redis.call('ZADD', index, deadline, key)
end
if status == 'succeeded' or status == 'compensated' or status == 'cancelled' then
  redis.call('ZREM', index, key)
  redis.call('PEXPIRE', journal, retention)
elseif status == 'compensation_failed' then  -- waits for a person: never expires
  redis.call('ZREM', index, key)
elseif release == '1' then  -- released but not finished: recoverable at once
  redis.call('ZADD', index, now, key)
end
-- The end replaced a long value (the dispatch record with the message's arguments)
-- by a short one. A hash that once held a long value stays in Redis's hashtable
-- encoding; written afresh it is a listpack again (about a third of the memory)
-- when every value is short. Once per execution, and only when it is a hashtable
-- (a server that cannot say, a Redis-compatible one, gets it rewritten anyway).
local encoding = long_dispatch and redis.pcall('OBJECT', 'ENCODING', journal)
if long_dispatch and encoding ~= 'listpack' and encoding ~= 'ziplist' then
  local fields = redis.call('HGETALL', journal)
  local ttl = redis.call('PTTL', journal)
  redis.call('DEL', journal)
  for first = 1, #fields, 512 do
    redis.call('HSET', journal, unpack(fields, first, math.min(first + 511, #fields)))
  end
  if ttl > 0 then redis.call('PEXPIRE', journal, ttl) end
end
return tonumber(head[2] or '0')  -- nothing here changes the cancel flag
