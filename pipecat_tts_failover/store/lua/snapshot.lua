-- Read the controls and every provider's record at once, for a store
-- (re)synchronizing its view. KEYS[1] is the epoch key: a token set once per
-- dataset, so a store can tell that Redis lost its data (restarted empty) while
-- it was away; ARGV[1] is the token to set if there is none. KEYS[2] is the
-- controls hash. ARGV[3..] are the provider ids of the records KEYS[3..].
-- Replies {epoch, {controls rev, controls value}, {id, rev, failures,
-- down_until, reason, since, attempts, window_failures, ejections}, ...}.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local controls = redis.call('HMGET', KEYS[2], 'rev', 'value')
local out = {redis.call('GET', KEYS[1]), {tonumber(controls[1]) or 0, controls[2]}}
for i = 3, #KEYS do
  local r = redis.call('HMGET', KEYS[i], 'rev', 'failures', 'down_until', 'reason', 'since',
    'attempts', 'window_failures', 'ejections')
  if r[1] then
    out[#out + 1] = {ARGV[i], tonumber(r[1]), tonumber(r[2]) or 0, r[3], r[4], r[5],
      tonumber(r[6]) or 0, tonumber(r[7]) or 0, tonumber(r[8]) or 0}
  end
end
return out
