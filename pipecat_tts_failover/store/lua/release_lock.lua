-- Delete the lock KEYS[1] only if it still holds this store's token ARGV[1]: a
-- lock that ran out and was taken by another store is left alone.
-- Replies 1 if the lock was deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
