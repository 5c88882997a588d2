-- cancel: ask a non-terminal execution to stop (it compensates, ends cancelled).
--
-- KEYS[1] - the execution's journal hash
-- returns 1 if the request was recorded, 0 if there is no such execution or it
-- has already ended

local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'compensated'
    or status == 'compensation_failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'cancel', 1)
return 1
