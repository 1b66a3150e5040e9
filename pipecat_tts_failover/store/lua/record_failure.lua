-- Add failed sentences to the provider's consecutive count, each one once:
-- KEYS[3..] are their markers, and one whose marker exists was counted already
-- (a command that reached a slow Redis after the store gave up on it, counted
-- it locally and wrote it back). Markers live ARGV[3] seconds.
-- changed is 1 if anything was added.
local added = 0
for i = 3, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[3]) then
    added = added + 1
  end
end
if added == 0 then
  return reply(0)
end
redis.call('HINCRBY', KEYS[1], 'failures', added)
return changed(1)
