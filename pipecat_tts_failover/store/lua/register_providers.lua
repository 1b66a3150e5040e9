-- Merge one worker's provider ids, ARGV in its preference order, into the list
-- KEYS[1] of every registered provider (as store.base.merge_registered does):
-- the order already registered never changes; a new id goes right after the
-- worker's previous id, a new first id right before the first of the worker's
-- later ids already registered, or at the end. The list is rewritten only if
-- something was added. Replies the merged list.
local merged = redis.call('LRANGE', KEYS[1], 0, -1)
local function position(id)
  for i = 1, #merged do
    if merged[i] == id then
      return i
    end
  end
  return nil
end
local added = false
local anchor = nil
for j = 1, #ARGV do
  local at = position(ARGV[j])
  if at then
    anchor = at
  else
    if anchor then
      at = anchor + 1
    else
      at = #merged + 1
      for k = j + 1, #ARGV do
        local later = position(ARGV[k])
        if later then
          at = later
          break
        end
      end
    end
    table.insert(merged, at, ARGV[j])
    anchor = at
    added = true
  end
end
if added then
  redis.call('DEL', KEYS[1])
  redis.call('RPUSH', KEYS[1], unpack(merged))
end
return merged
