-- Add ARGV[3] failed sentences to the provider's consecutive count.
redis.call('HINCRBY', KEYS[1], 'failures', tonumber(ARGV[3]))
return changed(1)
