-- Mark the provider down until ARGV[4] (reason ARGV[5], since ARGV[6]) unless
-- it is already down at ARGV[3]; changed is 1 only for the up -> down transition.
local now = tonumber(ARGV[3])
local down_until = tonumber(redis.call('HGET', KEYS[1], 'down_until'))
if (down_until and now < down_until) or tonumber(ARGV[4]) <= now then
  return reply(0)
end
redis.call('HSET', KEYS[1], 'down_until', ARGV[4], 'reason', ARGV[5], 'since', ARGV[6])
return changed(1)
