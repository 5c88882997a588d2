-- schedule: keep a message to be sent again at a later time, for a broker that
-- has no delayed delivery of its own (the kombu adapter on Redis, SQS, ...).
--
-- KEYS[1] - the partition's timers (zset: timer id -> due time, ms)
-- KEYS[2] - their messages (hash: timer id -> message)
-- ARGV[1] - timer id (unique: two deliveries of one execution may each leave one)
-- ARGV[2] - delay, ms from now by the server's clock
-- ARGV[3] - the message (encoded by the caller)

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
