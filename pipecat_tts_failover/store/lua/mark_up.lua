-- Clear the provider's mark-down and its count of failures in a row; the
-- window and the ejection history stay. ARGV[4] is empty, or for a mark-up
-- made while Redis was away, the time it was made: a mark-down made after that
-- is kept. changed is 1 only if it was down at ARGV[3] (now).
local now, up_at = tonumber(ARGV[3]), tonumber(ARGV[4])
local r = redis.call('HMGET', KEYS[1], 'down_until', 'since', 'failures')
local down_until, since, failures = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]) or 0
if up_at and since and since > up_at then
  return reply(0)
end
if not down_until and failures == 0 then
  return reply(0)
end
redis.call('HDEL', KEYS[1], 'down_until', 'reason', 'since')
redis.call('HSET', KEYS[1], 'failures', 0)
local was_down = down_until and now < down_until
return changed(was_down and 1 or 0)
