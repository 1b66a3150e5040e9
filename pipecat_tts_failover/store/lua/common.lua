-- Shared by the scripts that change a provider's record (record_attempt,
-- mark_down, mark_up, extend_down); prepended to each one when it is registered.
--
-- A provider's record is the hash KEYS[1]:
--   rev             revision, bumped by every change (readers drop stale updates)
--   failures        failed attempts in a row, fleet-wide, since the last success
--   down_until      wall-clock seconds the mark-down ends (absent when up)
--   reason          FailureReason value of the mark-down
--   since           wall-clock seconds it was marked down
--   attempts        attempts in the health policy's window, at the last attempt
--   window_failures failed attempts in that window
--   ejections       recent ejections at the last attempt (forgiveness applied)
--   ejection_count  ejections counted toward the next one's length (none forgiven)
--   ejected_at      wall-clock seconds of the last ejection
-- KEYS[2] is the set of provider ids the store has seen.
-- ARGV[1] is the channel changes are published on, ARGV[2] the provider id.
-- Every script replies {changed, rev, failures, down_until, reason, since,
-- attempts, window_failures, ejections}.

local function reply(changed)
  local r = redis.call('HMGET', KEYS[1], 'rev', 'failures', 'down_until', 'reason', 'since',
    'attempts', 'window_failures', 'ejections')
  return {changed, tonumber(r[1]) or 0, tonumber(r[2]) or 0, r[3], r[4], r[5],
    tonumber(r[6]) or 0, tonumber(r[7]) or 0, tonumber(r[8]) or 0}
end

-- Bump the revision, publish the new record and reply with it.
local function changed(flag)
  redis.call('HINCRBY', KEYS[1], 'rev', 1)
  redis.call('SADD', KEYS[2], ARGV[2])
  local r = reply(flag)
  local message = {p = ARGV[2], rev = r[2], failures = r[3], attempts = r[7],
    window_failures = r[8], ejections = r[9]}
  if r[4] then
    message.down_until = r[4]
    message.reason = r[5]
    message.since = r[6]
  end
  redis.call('PUBLISH', ARGV[1], cjson.encode(message))
  return r
end
