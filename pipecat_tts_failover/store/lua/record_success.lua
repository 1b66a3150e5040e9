-- Reset the consecutive failure count; a no-op (and no message) when it is 0.
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures')) or 0
if failures == 0 then
  return reply(0)
end
redis.call('HSET', KEYS[1], 'failures', 0)
return changed(1)
