-- ratewall: an async job takes over a request's leases.
-- KEYS[i]  the gauge counters (sorted sets) holding the request's lease
-- ARGV[1]  the request's lease id
-- ARGV[2]  the job's lease id ("job:" .. job id)
-- ARGV[3]  how long the job may hold them (ms)
-- Returns the number of leases moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local moved = 0
for i = 1, #KEYS do
  if redis.call('ZREM', KEYS[i], ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], ttl + 1000, 'GT')
    moved = moved + 1
  end
end
return moved
