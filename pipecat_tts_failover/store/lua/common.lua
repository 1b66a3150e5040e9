-- Shared by the scripts that change a provider's record (record_failure,
-- record_success, mark_down, mark_up, extend_down); prepended to each one when
-- it is registered.
--
-- A provider's record is the hash KEYS[1]:
--   rev         revision, bumped by every change (readers drop stale updates)
--   failures    consecutive failed sentences
--   down_until  wall-clock seconds the mark-down ends (absent when up)
--   reason      FailureReason value of the mark-down
--   since       wall-clock seconds it was marked down
-- KEYS[2] is the set of provider ids the store has seen.
-- ARGV[1] is the channel changes are published on, ARGV[2] the provider id.
-- Every script replies {changed, rev, failures, down_until, reason, since}.

local function reply(changed)
  local r = redis.call('HMGET', KEYS[1], 'rev', 'failures', 'down_until', 'reason', 'since')
  return {changed, tonumber(r[1]) or 0, tonumber(r[2]) or 0, r[3], r[4], r[5]}
end

-- Bump the revision, publish the new record and reply with it.
local function changed(flag)
  redis.call('HINCRBY', KEYS[1], 'rev', 1)
  redis.call('SADD', KEYS[2], ARGV[2])
  local r = reply(flag)
  local message = {p = ARGV[2], rev = r[2], failures = r[3]}
  if r[4] then
    message.down_until = r[4]
    message.reason = r[5]
    message.since = r[6]
  end
  redis.call('PUBLISH', ARGV[1], cjson.encode(message))
  return r
end
