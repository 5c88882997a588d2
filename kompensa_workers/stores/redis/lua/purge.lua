-- purge: delete an ended execution's record (the operator's clean-up).
--
-- KEYS[1] - the execution's journal hash
-- KEYS[2] - the recovery index (zset)
-- KEYS[3] - re-dispatches since the last claim (hash)
-- ARGV[1] - execution key (its member in the index and the recovery hash)
-- returns 1 if deleted, 0 if there is no such record, -1 if it has not ended

local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 0
end
local terminal = {succeeded = true, compensated = true, compensation_failed = true,
                  cancelled = true}
if not terminal[status] then
  return -1
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
