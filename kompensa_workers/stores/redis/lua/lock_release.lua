-- lock_release: delete one master's lock if the token still holds it.
--
-- KEYS[1] - the lock resource
-- ARGV[1] - token
-- returns 1 if deleted, 0 if the token did not hold it

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
