-- ratewall: the leases of async jobs. ARGV[1] names what to do; ARGV[2]
-- is the time in ms ('' for Redis TIME, the store's clock; tests set it).
--
-- "hold": an async job takes over a request's leases.
--   KEYS[1]    the job record of the account (a hash: lease -> its gauges)
--   KEYS[2..]  the gauge counters (sorted sets) holding the request's lease
--   ARGV[3]    the request's lease id
--   ARGV[4]    the job's lease id ("job:" .. job .. ":" .. request id)
--   ARGV[5]    how long the job may hold them (ms)
--   Returns the number of leases moved.
-- "done": release every lease of the record; KEYS[1] the record.
--   Returns the number of leases that were still held.
-- "index": KEYS[1] the job's index (a sorted set: account -> expiry);
--   ARGV[3] the account, ARGV[4] ttl (ms). Returns 1.
-- "find": KEYS[1] the index. Returns up to two accounts holding the job.
-- "unindex": KEYS[1] the index, ARGV[3] the account. Returns 1.
--
-- The record and the gauges of one account share its hash tag; the index
-- is a key of its own, always called alone.
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local mode = ARGV[1]

-- Make key live at least ttl ms more (never shorten it).
local function keep(key, ttl)
  local left = redis.call('PTTL', key)
  if left == -1 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end

if mode == 'hold' then
  local ttl = tonumber(ARGV[5])
  local moved = {}
  for i = 2, #KEYS do
    if redis.call('ZREM', KEYS[i], ARGV[3]) == 1 then
      redis.call('ZADD', KEYS[i], now + ttl, ARGV[4])
      keep(KEYS[i], ttl + 1000)
      moved[#moved + 1] = KEYS[i]
    end
  end
  if #moved > 0 then
    redis.call('HSET', KEYS[1], ARGV[4], table.concat(moved, '\n'))
    keep(KEYS[1], ttl + 1000)
  end
  return #moved
elseif mode == 'done' then
  local all = redis.call('HGETALL', KEYS[1])
  local released = 0
  for i = 1, #all, 2 do
    local lease = all[i]
    for key in string.gmatch(all[i + 1], '[^\n]+') do
      local until_ms = redis.call('ZSCORE', key, lease)
      if until_ms then
        redis.call('ZREM', key, lease)
        -- an expired lease was free already: not counted as released
        if tonumber(until_ms) > now then
          released = released + 1
        end
      end
    end
  end
  redis.call('DEL', KEYS[1])
  return released
elseif mode == 'index' then
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[1], 'GT', now + ttl, ARGV[3])
  keep(KEYS[1], ttl + 1000)
  return 1
elseif mode == 'find' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  return redis.call('ZRANGE', KEYS[1], 0, 1)
elseif mode == 'unindex' then
  redis.call('ZREM', KEYS[1], ARGV[3])
  return 1
end
return redis.error_reply('hold.lua: unknown mode')
