-- ratewall: give back one request's leases.
-- KEYS[i]  the gauge counters (sorted sets) holding the lease
-- ARGV[1]  lease id
-- Returns the number of leases removed.
local removed = 0
for i = 1, #KEYS do
  removed = removed + redis.call('ZREM', KEYS[i], ARGV[1])
end
return removed
