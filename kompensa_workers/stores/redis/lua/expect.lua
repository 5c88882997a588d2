-- expect: a saga was sent; record it (status 'queued') unless the journal knows it.
-- Recovery sends it again if no delivery claims it before the deadline: the
-- broker lost the message before any saga code saw it.
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset: execution key -> deadline, ms)
-- ARGV[1] - execution key (its member in the index)
-- ARGV[2] - saga name
-- ARGV[3] - how to dispatch it again (encoded)
-- ARGV[4] - how long a delivery may take to claim it, ms
-- ARGV[5] - send time for display (client clock, seconds)
-- (No fingerprint: the arguments a delivery sees are what the broker's serializer
-- made of them; the first claim records its own.)
-- returns 1 if recorded, 0 if the journal already holds the execution

local journal, index = KEYS[1], KEYS[2]
if redis.call('EXISTS', journal) == 1 then
  return 0
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('HSET', journal, 'saga', ARGV[2], 'fingerprint', '', 'status', 'queued',
           'created_at', ARGV[5], 'updated_at', ARGV[5], 'fence', 0, 'deliveries', 0,
           'stalled', 0, 'open', 0, 'cancel', 0, 'dispatch', ARGV[3])
redis.call('ZADD', index, now + tonumber(ARGV[4]), ARGV[1])
return 1
