-- ratewall: one decision in one script. Every check of a request
-- is evaluated; only if all have room are all charged. A refusal, and a
-- peek (usage), write nothing.
--
-- KEYS[i]   the counter of check i; all share the account's hash tag
-- ARGV[1]   now in ms, or "" for Redis TIME (the one clock of a fleet)
-- ARGV[2]   lease id (gauge checks); in mode "a", the charge's time (ms)
--           ("" in mode "a": now)
-- ARGV[3]   "1": charge if all fit; "0": peek only; "a": adjust (reconcile):
--           add each amount (negative gives back, only from the bucket or
--           period of the charge) whatever the limits; returns {1, now}
-- ARGV[4]   mode "1" only: the latest time (ms, this script's clock) at
--           which the caller still waits for the answer, or "" for none.
--           Run later (a stalled Redis waking up), the script writes
--           nothing and returns {-1, now}: the caller was already told
--           "unavailable", so nothing may be charged.
--           Mode "a": a lease id, or "" for none. With one, the adjust is
--           a refund of that lease's decision: applied only if the lease is
--           held in one of the gauge checks (proof that the decision was
--           charged), which then give it back; else nothing is written and
--           {0, now} is returned. Sent again, it is a no-op.
-- then 4 values per check i, from ARGV[5 + 4 * (i - 1)]:
--   kind    "r" rolling window | "c" calendar period | "g" gauge (leases);
--           in capitals ("R", "C", "G") a shadow check: it never refuses,
--           and is charged whenever the others admit, past its own limit
--   param   r: window ms | c: "d" or "m" | g: lease ttl ms
--   limit   metric units
--   amount  metric units this request adds
--
-- Returns { admitted, now, then per check: ok, used, reset_ms, retry_ms }
-- with retry_ms -1 for "never" (the amount alone is over the limit).
--
-- Every argument is checked before the first write: a bad one is an error
-- reply and nothing is written (no script stops halfway). Amounts and
-- limits are integers within MAX (LIM_PRICE_MAX of limiter/limits.h, the
-- larger of the two caps), and every counter value written saturates at
-- CAP, so all arithmetic here stays on integers exactly representable in
-- a Lua number (below 2^53): MAX + MAX < CAP, CAP + MAX < 2^53.
--
-- Counters:
--   r: hash { h = newest bucket index, s = running sum, "0".."60" = bucket
--      slots (bucket j in slot j % 61) }; 61 buckets of window/60 are
--      counted, a superset of the window. Expires after a window and a
--      bucket of silence.
--   c: hash { p = period id, v = value }; expires after the period ends.
--   g: sorted set of lease ids scored by their expiry; expired leases are
--      not counted and are removed on the next charge.

local MAX = 1125899906842624     -- 2^50 = LIM_PRICE_MAX (>= LIM_UNITS_MAX)
local CAP = 4 * MAX               -- 2^52: the most a counter ever holds
local FIRST = 5                   -- ARGV index of the first check's values

-- An integer written in decimal digits (no exponent, hex, nan or inf).
local function int_arg(v, lo, hi)
  if type(v) ~= 'string' or not string.match(v, '^%-?%d+$') or #v > 17 then return nil end
  local x = tonumber(v)
  if x == nil or x ~= x or x < lo or x > hi or math.floor(x) ~= x then return nil end
  return x
end
local function bad(what)
  return redis.error_reply('ERR ratewall acquire: bad argument: ' .. what)
end

-- ---- validation: nothing below this block may fail -----------------------
local mode = ARGV[3]
if mode ~= '1' and mode ~= '0' and mode ~= 'a' then return bad('mode') end
if #ARGV ~= FIRST - 1 + 4 * #KEYS then return bad('count') end
if ARGV[1] ~= '' and int_arg(ARGV[1], 0, 2 ^ 50) == nil then return bad('now') end
if mode == 'a' and ARGV[2] ~= '' and int_arg(ARGV[2], 0, 2 ^ 50) == nil then
  return bad('charged')
end
if mode == '1' and ARGV[4] ~= '' and int_arg(ARGV[4], 0, 2 ^ 50) == nil then
  return bad('deadline')
end
local KIND, SHADOW = {}, {}
for i = 1, #KEYS do
  local a = FIRST + 4 * (i - 1)
  local kind, param = ARGV[a], ARGV[a + 1]
  if kind == 'R' or kind == 'C' or kind == 'G' then
    SHADOW[i] = true
    kind = string.lower(kind)
  end
  KIND[i] = kind
  if kind == 'r' then
    if int_arg(param, 1, 2 ^ 40) == nil then return bad('window of check ' .. i) end
  elseif kind == 'c' then
    if param ~= 'd' and param ~= 'm' then return bad('period of check ' .. i) end
  elseif kind == 'g' then
    if int_arg(param, 1, 2 ^ 40) == nil then return bad('lease ttl of check ' .. i) end
  else
    return bad('kind of check ' .. i)
  end
  if int_arg(ARGV[a + 2], 0, MAX) == nil then return bad('limit of check ' .. i) end
  local lo = (mode == 'a') and -MAX or 0
  if int_arg(ARGV[a + 3], lo, MAX) == nil then return bad('amount of check ' .. i) end
end
-- ---------------------------------------------------------------------------

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local lease = ARGV[2]
local charge = mode == '1'
if charge and ARGV[4] ~= '' and now > tonumber(ARGV[4]) then
  return { -1, now } -- too late: the caller has moved on; nothing written
end
local B, S = 60, 61

local function bucket_of(t, w) return math.floor(t * B / w) end
-- ceil(j * w / 60), without j * w (past 2^53 for second windows).
local function bucket_start(j, w)
  local q = math.floor(j / B)
  return q * w + math.ceil((j - q * B) * w / B)
end

-- Civil date from days since 1970-01-01 (proleptic Gregorian), and back.
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- Period id and end (first ms of the next period) of time t.
local function period(per, t)
  local day = math.floor(t / 86400000)
  if per == 'd' then return day, (day + 1) * 86400000 end
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return y * 12 + m - 1, days_from_civil(ny, nm, 1) * 86400000
end

local n = #KEYS

if mode == 'a' then
  local charged = ARGV[2] ~= '' and tonumber(ARGV[2]) or now
  if ARGV[4] ~= '' then
    local held = false
    for i = 1, n do
      if KIND[i] == 'g' and redis.call('ZSCORE', KEYS[i], ARGV[4]) then
        held = true
      end
    end
    if not held then return { 0, now } end
    for i = 1, n do
      if KIND[i] == 'g' then redis.call('ZREM', KEYS[i], ARGV[4]) end
    end
  end
  for i = 1, n do
    local a = FIRST + 4 * (i - 1)
    local kind, param, d, key = KIND[i], ARGV[a + 1], tonumber(ARGV[a + 3]), KEYS[i]
    if kind == 'r' and d ~= 0 then
      local w = tonumber(param)
      local cur = bucket_of(now, w)
      local hs = redis.call('HMGET', key, 'h', 's')
      local head, sum = tonumber(hs[1]), tonumber(hs[2]) or 0
      if d > 0 then
        if head == nil or cur - head >= S then
          redis.call('DEL', key)
          sum = 0
        elseif cur > head then
          local gone = {}
          for j = head + 1, cur do gone[#gone + 1] = tostring(j % S) end
          local old = redis.call('HMGET', key, unpack(gone))
          for k = 1, #old do sum = sum - (tonumber(old[k]) or 0) end
          redis.call('HDEL', key, unpack(gone))
        end
        if head == nil or cur > head then head = cur end
        -- Debt is added whatever the limits, but never past CAP.
        d = math.min(d, CAP - sum)
        if d < 0 then d = 0 end
        redis.call('HINCRBY', key, tostring(cur % S), d)
        redis.call('HSET', key, 'h', head, 's', sum + d)
        redis.call('PEXPIRE', key, w + math.ceil(w / B) + 1000)
      elseif head ~= nil then
        -- Give back only from the charge's own bucket, if still counted.
        local j = bucket_of(charged, w)
        if j <= head and j > head - S and cur - j < S then
          local slot = tostring(j % S)
          local have = tonumber(redis.call('HGET', key, slot)) or 0
          local take = math.min(-d, have)
          if take > 0 then
            redis.call('HINCRBY', key, slot, -take)
            redis.call('HSET', key, 's', sum - take)
          end
        end
      end
    elseif kind == 'c' and d ~= 0 then
      local pid, pend = period(param, now)
      local pv = redis.call('HMGET', key, 'p', 'v')
      local v = (tonumber(pv[1]) == pid) and (tonumber(pv[2]) or 0) or nil
      if d > 0 then
        redis.call('HSET', key, 'p', pid, 'v', math.min((v or 0) + d, CAP))
        redis.call('PEXPIRE', key, pend - now + 60000)
      elseif v ~= nil and period(param, charged) == pid then
        redis.call('HSET', key, 'v', math.max(0, v + d))
      end
    end
  end
  return { 1, now }
end

local st = {}
local admitted = 1
for i = 1, n do
  local a = FIRST + 4 * (i - 1)
  local c = { kind = KIND[i], param = ARGV[a + 1], limit = tonumber(ARGV[a + 2]),
              amount = tonumber(ARGV[a + 3]), key = KEYS[i] }
  if c.kind == 'r' then
    c.w = tonumber(c.param)
    c.cur = bucket_of(now, c.w)
    local hs = redis.call('HMGET', c.key, 'h', 's')
    c.head = tonumber(hs[1])
    c.used = tonumber(hs[2]) or 0
    c.gone = {}
    if c.head == nil then
      c.head = c.cur
      c.used = 0
    elseif c.cur - c.head >= S then
      c.used = 0
      c.wipe = true
    elseif c.cur > c.head then
      -- Only the buckets that just left are read.
      for j = c.head + 1, c.cur do c.gone[#c.gone + 1] = tostring(j % S) end
      local old = redis.call('HMGET', c.key, unpack(c.gone))
      for k = 1, #old do c.used = c.used - (tonumber(old[k]) or 0) end
    end
  elseif c.kind == 'c' then
    c.pid, c.pend = period(c.param, now)
    local pv = redis.call('HMGET', c.key, 'p', 'v')
    if tonumber(pv[1]) == c.pid then c.used = tonumber(pv[2]) or 0 else c.used = 0 end
  else
    c.ttl = tonumber(c.param)
    c.used = redis.call('ZCOUNT', c.key, '(' .. now, '+inf')
  end
  c.ok = c.used + c.amount <= c.limit
  if SHADOW[i] then
    -- Counted past its limit, but never past CAP.
    c.amount = math.max(0, math.min(c.amount, CAP - c.used))
  elseif not c.ok then
    admitted = 0
  end
  st[i] = c
end

-- Bucket j's count as it stands at now (slots of buckets that left are 0),
-- read from Redis CHUNK slots at a time, oldest first, only as far as the
-- caller goes: a refusal usually needs just the oldest few buckets.
local CHUNK = 8
local function slots_at_now(c)
  local cache = {}
  return function(j)
    if c.wipe or j > c.head or j < c.head - B then return 0 end
    if cache[j] == nil then
      local f, idx = {}, {}
      for k = j, math.min(j + CHUNK - 1, c.head) do
        f[#f + 1] = tostring(k % S)
        idx[#idx + 1] = k
      end
      local v = redis.call('HMGET', c.key, unpack(f))
      for k = 1, #idx do cache[idx[k]] = tonumber(v[k]) or 0 end
    end
    return cache[j]
  end
end

local out = { admitted, now }
for i = 1, n do
  local c = st[i]
  local reset, retry = 0, now
  if c.kind == 'r' then
    if admitted == 1 and charge then
      if c.wipe then
        redis.call('DEL', c.key)
      elseif #c.gone > 0 then
        redis.call('HDEL', c.key, unpack(c.gone))
      end
      redis.call('HINCRBY', c.key, tostring(c.cur % S), c.amount)
      redis.call('HSET', c.key, 'h', c.cur, 's', c.used + c.amount)
      redis.call('PEXPIRE', c.key, c.w + math.ceil(c.w / B) + 1000)
      reset = bucket_start(c.cur + S, c.w)
    else
      -- Every write goes to the head bucket, so the head is the newest
      -- bucket that counts anything.
      reset = now
      if c.used > 0 then reset = math.max(bucket_start(c.head + S, c.w), now) end
      if not c.ok then
        if c.amount > c.limit then
          retry = -1
        else
          local at = slots_at_now(c)
          local sum = c.used
          retry = bucket_start(c.cur + S, c.w)
          for j = c.cur - B, c.cur do
            sum = sum - at(j)
            if sum + c.amount <= c.limit then
              retry = math.max(bucket_start(j + S, c.w), now)
              break
            end
          end
        end
      end
    end
  elseif c.kind == 'c' then
    reset = c.pend
    if admitted == 1 and charge then
      redis.call('HSET', c.key, 'p', c.pid, 'v', c.used + c.amount)
      redis.call('PEXPIRE', c.key, c.pend - now + 60000)
    elseif not c.ok then
      if c.amount > c.limit then retry = -1 else retry = c.pend end
    end
  else
    if admitted == 1 and charge then
      redis.call('ZREMRANGEBYSCORE', c.key, '-inf', now)
      redis.call('ZADD', c.key, now + c.ttl, lease)
      -- Expiries are relative to the script's clock. A new set has no TTL,
      -- which GT would take for an infinite one.
      if c.used == 0 then
        redis.call('PEXPIRE', c.key, c.ttl + 1000)
      else
        redis.call('PEXPIRE', c.key, c.ttl + 1000, 'GT')
      end
    elseif not c.ok then
      if c.amount > c.limit then retry = -1 else retry = now + 1000 end
    end
  end
  out[#out + 1] = c.ok and 1 or 0
  out[#out + 1] = c.used
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
