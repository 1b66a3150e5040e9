-- Mark the provider down until ARGV[4] (reason ARGV[5], since ARGV[6]) unless
-- it is already down at ARGV[3]; changed is 1 only for the up -> down transition.
-- ARGV[7] is empty, or for an ejection a store decided while Redis was away,
-- its count of recent ejections: the ejection history takes it (ejected at
-- ARGV[6]). The evidence that decided it stays the store's own.
local now = tonumber(ARGV[3])
local down_until = tonumber(redis.call('HGET', KEYS[1], 'down_until'))
if (down_until and now < down_until) or tonumber(ARGV[4]) <= now then
  return reply(0)
end
redis.call('HSET', KEYS[1], 'down_until', ARGV[4], 'reason', ARGV[5], 'since', ARGV[6])
if ARGV[7] and ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'ejections', ARGV[7], 'ejection_count', ARGV[7],
    'ejected_at', ARGV[6])
end
return changed(1)
