-- Replace the operator's controls, the hash KEYS[1] {rev, value}, with ARGV[2]
-- (a JSON object this script does not read) and publish them on ARGV[1] as
-- {k = "controls", rev, value}. With ARGV[3] = '1', a store restoring controls
-- Redis lost, they are written only if there are none.
-- Replies the controls' revision.
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return tonumber(redis.call('HGET', KEYS[1], 'rev')) or 0
end
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'value', ARGV[2])
redis.call('PUBLISH', ARGV[1], cjson.encode({k = 'controls', rev = rev, value = ARGV[2]}))
return rev
