-- lock_extend: extend one master's lock if the token still holds it; never
-- shortens it.
--
-- KEYS[1] - the lock resource
-- ARGV[1] - token
-- ARGV[2] - ttl, ms
-- returns 1 if extended (or already longer), 0 if the token no longer holds it

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
