-- lock_acquire: take one master's vote for a Redlock grant.
-- Granted when the resource is free, already ours (a retried call), or held by
-- the token a delayed delivery presents (hand-over).
--
-- KEYS[1] - the lock resource
-- ARGV[1] - the new token
-- ARGV[2] - the token presented for hand-over ('' if none)
-- ARGV[3] - ttl, ms
-- returns 1 if this master grants, else 0

local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] or (ARGV[2] ~= '' and holder == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
