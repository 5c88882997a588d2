-- claim: one round trip that starts or resumes a delivery.
-- Creates the execution (or starts one recorded 'queued' when it was sent),
-- acquires the lease (or takes it over with the token the delayed delivery
-- presents), increments the fencing token and the delivery count, counts the
-- previous grant as lost if it never handed off, checks the arguments'
-- fingerprint, and returns the whole journal.
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset: execution key -> lease deadline, ms)
-- KEYS[3] - re-dispatches since the last claim (hash; a grant clears the count)
-- ARGV[1] - execution key (its member in the index)
-- ARGV[2] - saga name
-- ARGV[3] - fingerprint of the arguments
-- ARGV[4] - six words, space-separated (one argument: fewer to send and parse):
--           the lease token presented by a delayed delivery ('-' if none), the new
--           lease token (a retried claim sends the same one), the lease ttl (ms),
--           the start time for display (client clock, seconds), '1' when a
--           Redlock quorum already granted the lease, 'peek' when the quorum
--           refused it (report only: nothing is created or changed), else '0',
--           and '1' when the journal must hold the execution (the delivery
--           presents a lease token, or its message says it was recorded at send)
-- ARGV[5] - how to dispatch it again (encoded; '' keeps what is recorded)
-- ARGV[6..] - field, value pairs: the intent of the step(s) about to run first,
--            written only when this claim starts the execution
-- returns {state, retry_after_ms, {field, value, ...}}
--   state 'granted' | 'terminal' | 'conflict' (the whole journal follows)
--   state 'busy' (retry_after_ms: what is left of the holder's lease)
--   state 'lost' (it must exist and does not: nothing is created)
-- or, when this claim started the execution and wrote the intent, only the
-- integer fence * 2 + cancel flag (the claimer knows the rest)

local journal, index = KEYS[1], KEYS[2]
local key, saga, fingerprint = ARGV[1], ARGV[2], ARGV[3]
local presented, new_token, ttl, at, forced, must_exist = string.match(
  ARGV[4], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
if presented == '-' then presented = '' end
ttl = tonumber(ttl)
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local terminal = {succeeded = true, compensated = true, compensation_failed = true,
                  cancelled = true}
local peek = forced == 'peek'

local exists = redis.call('EXISTS', journal) == 1
if (presented ~= '' or must_exist == '1') and not exists then
  return {'lost', 0}
end
if peek and not exists then
  return {'busy', ttl}
end
if not exists and #ARGV <= 512 then
  -- A new execution, the usual first claim: the whole record in one write (the
  -- general path below reaches the same fields).
  local record = {'saga', saga, 'fingerprint', fingerprint, 'status', 'running',
                  'created_at', at, 'updated_at', at, 'fence', 1, 'deliveries', 1,
                  'stalled', 0, 'open', 1, 'cancel', 0, 'grants', at .. ' 1 new\n',
                  'lease_token', new_token, 'lease_until', now + ttl}
  if ARGV[5] ~= '' then
    table.insert(record, 'dispatch')
    table.insert(record, ARGV[5])
  end
  for i = 6, #ARGV do
    table.insert(record, ARGV[i])
  end
  redis.call('HSET', journal, unpack(record))
  redis.call('ZADD', index, now + ttl, key)
  redis.call('HDEL', KEYS[3], key)
  if #ARGV > 5 then
    return 2  -- fence 1, no cancel
  end
  return {'granted', 0, redis.call('HGETALL', journal)}
end
local started = false
if peek then
  started = false
elseif not exists then
  redis.call('HSET', journal, 'saga', saga, 'fingerprint', fingerprint,
             'status', 'running', 'created_at', at, 'updated_at', at,
             'fence', 0, 'deliveries', 0, 'stalled', 0, 'open', 0, 'cancel', 0)
  started = true
elseif redis.call('HGET', journal, 'status') == 'queued' then
  -- sent, and now delivered: it starts with the arguments the delivery carries
  redis.call('HSET', journal, 'status', 'running', 'saga', saga, 'fingerprint', fingerprint)
  started = true
end
if started then
  for first = 6, #ARGV, 512 do  -- in chunks: unpack() is limited by the Lua stack
    redis.call('HSET', journal, unpack(ARGV, first, math.min(first + 511, #ARGV)))
  end
end
local head = redis.call('HMGET', journal, 'fingerprint', 'status', 'lease_token',
                        'lease_until', 'open')
if head[1] ~= fingerprint then
  return {'conflict', 0, redis.call('HGETALL', journal)}
end
if terminal[head[2]] then
  return {'terminal', 0, redis.call('HGETALL', journal)}
end
local holder, deadline = head[3] or '', tonumber(head[4] or '0')
if peek then  -- the lock masters refused: say how long the journal's holder has
  return {'busy', math.max(deadline - now, 1)}
end
if holder == new_token then  -- our own claim, retried after a lost reply
  return {'granted', 0, redis.call('HGETALL', journal)}
end
if forced ~= '1' and holder ~= '' and deadline > now and holder ~= presented then
  return {'busy', deadline - now}
end
-- How the lease changed hands, for the record kept in 'grants' (the last ~60).
local how = 'new'
if holder ~= '' and holder == presented then
  how = 'handover'
elseif holder ~= '' and deadline <= now then
  how = 'expired'
elseif holder ~= '' then
  how = 'quorum'
elseif redis.call('HGET', journal, 'deliveries') ~= '0' then
  how = 'released'
end
if head[5] == '1' then  -- the previous grant died without handing off
  redis.call('HINCRBY', journal, 'stalled', 1)
end
local fence = redis.call('HINCRBY', journal, 'fence', 1)
local grants = (redis.call('HGET', journal, 'grants') or '') ..
  at .. ' ' .. fence .. ' ' .. how .. '\n'
if #grants > 4096 then
  grants = string.sub(grants, (string.find(grants, '\n', #grants - 4000, true) or 0) + 1)
end
redis.call('HSET', journal, 'grants', grants)
redis.call('HINCRBY', journal, 'deliveries', 1)
redis.call('HSET', journal, 'open', 1, 'lease_token', new_token,
           'lease_until', now + ttl)
if ARGV[5] ~= '' then
  redis.call('HSET', journal, 'dispatch', ARGV[5])
end
redis.call('PERSIST', journal)
redis.call('ZADD', index, now + ttl, key)
redis.call('HDEL', KEYS[3], key)
if started and #ARGV > 5 then
  return fence * 2 + tonumber(redis.call('HGET', journal, 'cancel') or '0')
end
return {'granted', 0, redis.call('HGETALL', journal)}
