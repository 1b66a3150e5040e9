-- Read every provider's record at once, for a store (re)synchronizing its view.
-- KEYS[1] is the epoch key: a token set once per dataset, so a store can tell
-- that Redis lost its data (restarted empty) while it was away. ARGV[1] is the
-- token to set if there is none, ARGV[2..] the provider ids of KEYS[2..].
-- Replies {epoch, {id, rev, failures, down_until, reason, since}, ...}.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local out = {redis.call('GET', KEYS[1])}
for i = 2, #KEYS do
  local r = redis.call('HMGET', KEYS[i], 'rev', 'failures', 'down_until', 'reason', 'since')
  if r[1] then
    out[#out + 1] = {ARGV[i], tonumber(r[1]), tonumber(r[2]) or 0, r[3], r[4], r[5]}
  end
end
return out
