-- Add one sentence attempt's outcome to the provider's evidence and eject the
-- provider if a rule says so: health.HealthWindow.record then .eject, the same
-- rules in the same order, atomically for the whole fleet.
--
-- KEYS[3] is the provider's window, a hash of time buckets: 'a:<index>'
-- attempts and 'f:<index>' failures, index = floor(now / bucket). KEYS[4..]
-- are the records of the provider's peers (for the panic floor).
-- ARGV[3]  now (wall-clock seconds, from the writing store's clock)
-- ARGV[4]  the failure's reason, or '' for an attempt that spoke
-- ARGV[5]  '1' if that failure is permanent
-- ARGV[6..15] the policy: consecutive, failure_rate, min_volume, bucket,
--          buckets (in the window), ejection, max_ejection, jitter,
--          forgive_after; then draw (in [-1, 1], for the jitter)
-- ARGV[16] seconds the window hash outlives its last attempt (tidying only:
--          old buckets are dropped here, by index)
-- Replies the record (see common.lua) with changed = 1 if this attempt ejected
-- the provider, then the rule that did ('' if none) and spared (1 if a rule
-- was met but every peer is down).

-- Python's float floor division (CPython's float_divmod), so every index and
-- count here is the one HealthWindow computes from the same numbers.
local function floordiv(a, b)
  local mod = math.fmod(a, b)
  local div = (a - mod) / b
  if mod ~= 0 and ((b < 0) ~= (mod < 0)) then
    div = div - 1
  end
  if div == 0 then
    return 0
  end
  local whole = math.floor(div)
  if div - whole > 0.5 then
    whole = whole + 1
  end
  return whole
end

local now = tonumber(ARGV[3])
local failure = ARGV[4]
local permanent = ARGV[5] == '1'
local consecutive_limit = tonumber(ARGV[6])
local failure_rate = tonumber(ARGV[7])
local min_volume = tonumber(ARGV[8])
local bucket = tonumber(ARGV[9])
local buckets = tonumber(ARGV[10])
local ejection = tonumber(ARGV[11])
local max_ejection = tonumber(ARGV[12])
local jitter = tonumber(ARGV[13])
local forgive_after = tonumber(ARGV[14])
local draw = tonumber(ARGV[15])

local record = redis.call('HMGET', KEYS[1],
  'down_until', 'failures', 'ejection_count', 'ejected_at')
local down_until = tonumber(record[1])
local down = down_until ~= nil and now < down_until
if down_until and not down then
  -- A mark-down that ran out reads as up (as LocalView.get does).
  redis.call('HDEL', KEYS[1], 'down_until', 'reason', 'since')
end
local consecutive = tonumber(record[2]) or 0
local ejection_count = tonumber(record[3]) or 0
local ejected_at = tonumber(record[4])

-- The attempt goes into the current bucket.
local current = floordiv(now, bucket)
redis.call('HINCRBY', KEYS[3], string.format('a:%d', current), 1)
if failure == '' then
  consecutive = 0
else
  redis.call('HINCRBY', KEYS[3], string.format('f:%d', current), 1)
  consecutive = consecutive + 1
end

-- Totals over the window; buckets older than it are dropped.
local oldest = current - buckets + 1
local attempts, failures = 0, 0
local fields = redis.call('HGETALL', KEYS[3])
for i = 1, #fields, 2 do
  local index = tonumber(string.sub(fields[i], 3))
  if index == nil or index < oldest then
    redis.call('HDEL', KEYS[3], fields[i])
  elseif string.sub(fields[i], 1, 1) == 'a' then
    attempts = attempts + tonumber(fields[i + 1])
  else
    failures = failures + tonumber(fields[i + 1])
  end
end

local function others_up()
  for i = 4, #KEYS do
    local until_ = tonumber(redis.call('HGET', KEYS[i], 'down_until'))
    if not (until_ and now < until_) then
      return true
    end
  end
  return false
end

-- Which rule, if any, ejects.
local rule, spared = nil, 0
if failure ~= '' and not down then
  if permanent then
    rule = 'permanent'
  else
    if consecutive >= consecutive_limit then
      rule = 'consecutive'
    elseif attempts >= min_volume and failures >= failure_rate * attempts then
      rule = 'rate'
    end
    if rule and not others_up() then
      rule, spared = nil, 1
    end
  end
end

-- Past ejections still counted: one is forgiven per forgive_after seconds.
local recent = 0
if ejected_at then
  recent = math.max(0, ejection_count - floordiv(math.max(0, now - ejected_at), forgive_after))
end

if rule then
  local count = recent + 1
  local seconds = math.min(max_ejection, ejection * math.max(1, count))
  seconds = seconds * (1.0 + jitter * math.max(-1.0, math.min(1.0, draw)))
  redis.call('HSET', KEYS[1],
    'down_until', string.format('%.17g', now + seconds), 'reason', failure, 'since', ARGV[3],
    'failures', consecutive, 'attempts', 0, 'window_failures', 0,
    'ejections', count, 'ejection_count', count, 'ejected_at', ARGV[3])
  -- The window's evidence starts afresh; the run of failures goes on until
  -- the provider speaks again.
  redis.call('DEL', KEYS[3])
else
  redis.call('HSET', KEYS[1], 'failures', consecutive, 'attempts', attempts,
    'window_failures', failures, 'ejections', recent)
  redis.call('EXPIRE', KEYS[3], ARGV[16])
end

local r = changed(rule and 1 or 0)
r[#r + 1] = rule or ''
r[#r + 1] = spared
return r
