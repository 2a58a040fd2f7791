-- ratewall: renew the leases one gateway worker holds, in one call.
-- KEYS[i]      a gauge counter (sorted set) holding a lease
-- ARGV[2i-1]   the lease id held in KEYS[i]
-- ARGV[2i]     its expiry from now (ms): the lease_ttl_ms it was taken with
-- A lease still in its set gets the expiry now + ttl (on Redis's clock); one
-- that is gone (released elsewhere, taken over by a job, expired, lost with
-- a Redis restart) is not created again.
-- Returns the lease ids found in none of their sets: the caller stops
-- renewing them.
if #ARGV ~= 2 * #KEYS then
  return redis.error_reply('ERR ratewall renew: bad argument count')
end
for i = 1, #KEYS do
  local ttl = tonumber(ARGV[2 * i])
  if ttl == nil or ttl < 1 or ttl > 2 ^ 40 or math.floor(ttl) ~= ttl then
    return redis.error_reply('ERR ratewall renew: bad ttl of key ' .. i)
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found, order = {}, {}
for i = 1, #KEYS do
  local id = ARGV[2 * i - 1]
  if found[id] == nil then
    found[id] = false
    order[#order + 1] = id
  end
  local ttl = tonumber(ARGV[2 * i])
  if redis.call('ZSCORE', KEYS[i], id) then
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, id)
    redis.call('PEXPIRE', KEYS[i], ttl + 1000, 'GT')
    found[id] = true
  end
end
local gone = {}
for _, id in ipairs(order) do
  if not found[id] then gone[#gone + 1] = id end
end
return gone
