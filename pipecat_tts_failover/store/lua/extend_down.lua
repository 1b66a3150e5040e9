-- Keep the provider marked down until at least ARGV[4] if it is down at ARGV[3]
-- (a failed recovery probe). Not a new incident: reason and since stay, and the
-- record is published only if its end moved. changed is 1 if it was down.
local now, down_until = tonumber(ARGV[3]), tonumber(ARGV[4])
local current = tonumber(redis.call('HGET', KEYS[1], 'down_until'))
if not (current and now < current) then
  return reply(0)
end
if down_until <= current then
  return reply(1)
end
redis.call('HSET', KEYS[1], 'down_until', ARGV[4])
return changed(1)
