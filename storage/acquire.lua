-- ratewall: one decision in one script. Every check of a request
-- is evaluated; only if all have room are all charged. A refusal, and a
-- peek (usage), write nothing (but the one-time rewrite of a window kept
-- in the earlier layout, which changes no count).
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
--   kind    "r" rolling window | "c" calendar period | "g" gauge (leases)
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
-- a Lua number (below 2^53): MAX + MAX < CAP, CAP + MAX < 2^53; a
-- window's running total restarts from its base before it would pass CAP.
--
-- Cost: in the steady state a rolling window is one read and one write of
-- its hash's first three fields, a calendar counter one read and one
-- write; a refusal's retry moment is the oldest bucket's slot, else a
-- bisection (at most 6 reads), never a walk over the buckets.
--
-- Counters:
--   r: hash { h = newest bucket index (the head), t = everything charged
--      since the hash was made (a running total), s = what the 61 buckets
--      up to the head count, "0".."60" = bucket slots: slot j % 61 holds
--      the running total as it stood at the end of bucket j, for buckets
--      before the head (the head's own total is t) }. So what buckets
--      i..head count is t minus slot (i - 1), the slot of the bucket that
--      leaves next is the one the current bucket takes over, and the moment
--      enough has left for a refused amount is found by bisecting the
--      (non-decreasing) slots, not by adding buckets up. 61 buckets of
--      window/60 are counted, a superset of the window. While the head is
--      the current bucket a decision reads h, t, s and writes t, s; a new
--      bucket adds one slot read and the expiry (a window and a bucket of
--      silence).
--   c: hash { p = period id, v = value }; expires after the period ends
--      (set when the period starts).
--   g: sorted set of lease ids scored by their expiry; expired leases are
--      not counted and are removed on the next charge.

local MAX = 1125899906842624     -- 2^50 = LIM_PRICE_MAX (>= LIM_UNITS_MAX)
local CAP = 4 * MAX               -- 2^52: the most a counter ever holds
local FIRST = 5                   -- ARGV index of the first check's values
local floor = math.floor

local function bad(what)
  return redis.error_reply('ERR ratewall acquire: bad argument: ' .. what)
end

-- ---- validation: nothing is written before all of it has passed ----------
-- Every numeric argument must be an integer written in decimal digits (no
-- exponent, hex, fraction, space, nan or inf) within its range. The
-- characters of all check arguments are looked at once (digits, '-' and
-- the letters of the kinds and periods); tonumber then refuses any other
-- shape ("", "-", "1-2", "d1"), and the ranges bound the rest.
local mode = ARGV[3]
if mode ~= '1' and mode ~= '0' and mode ~= 'a' then return bad('mode') end
local n = #KEYS
if #ARGV ~= FIRST - 1 + 4 * n then return bad('count') end
if n > 0 and string.find(table.concat(ARGV, ',', FIRST), '[^%d,%-rcgdmRCG]') then
  return bad('a number not written in decimal digits')
end
local T_MAX, P_MAX = 1125899906842624, 1099511627776 -- 2^50 ms, 2^40 ms
local function time_ok(v)
  if v == '' then return true end
  local x = tonumber(v)
  return x ~= nil and x >= 0 and x <= T_MAX and not string.find(v, '%D')
end
if not time_ok(ARGV[1]) then return bad('now') end
if mode == 'a' and not time_ok(ARGV[2]) then return bad('charged') end
if mode == '1' and not time_ok(ARGV[4]) then return bad('deadline') end
local lo = (mode == 'a') and -MAX or 0
-- The values of check i (kind, param, limit, amount), or nil and what is
-- wrong. A decision checks each as it reads its counter (reads write
-- nothing), an adjust all of them before its first write.
local function check_of(i)
  local a = FIRST + 4 * (i - 1)
  local kind, param = ARGV[a], ARGV[a + 1]
  -- A shadow limit's check comes in capitals: counted, never refusing.
  local shadow = kind == 'R' or kind == 'C' or kind == 'G'
  if shadow then kind = string.lower(kind) end
  local p = param
  if kind == 'r' or kind == 'g' then
    p = tonumber(param)
    if p == nil or p < 1 or p > P_MAX then
      return nil, (kind == 'r' and 'window' or 'lease ttl') .. ' of check ' .. i
    end
  elseif kind == 'c' then
    if param ~= 'd' and param ~= 'm' then return nil, 'period of check ' .. i end
  else
    return nil, 'kind of check ' .. i
  end
  local l, m = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if l == nil or l < 0 or l > MAX then return nil, 'limit of check ' .. i end
  if m == nil or m < lo or m > MAX then return nil, 'amount of check ' .. i end
  return kind, p, l, m, shadow
end
if mode == 'a' then
  for i = 1, n do
    local kind, why = check_of(i)
    if not kind then return bad(why) end
  end
end
-- ---------------------------------------------------------------------------

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end
local lease = ARGV[2]
local charge = mode == '1'
if charge and ARGV[4] ~= '' and now > tonumber(ARGV[4]) then
  return { -1, now } -- too late: the caller has moved on; nothing written
end
local B, S = 60, 61

local function bucket_of(t, w) return floor(t * B / w) end
-- ceil(j * w / 60), without j * w (past 2^53 for second windows).
local function bucket_start(j, w)
  local q = floor(j / B)
  return q * w + math.ceil((j - q * B) * w / B)
end

-- Civil date from days since 1970-01-01 (proleptic Gregorian), and back.
local function civil(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524)
                          - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- Period id and end (first ms of the next period) of time t.
local function period(per, t)
  local day = floor(t / 86400000)
  if per == 'd' then return day, (day + 1) * 86400000 end
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return y * 12 + m - 1, days_from_civil(ny, nm, 1) * 86400000
end

-- ---- rolling windows ------------------------------------------------------

-- A hash written by the earlier layout (per-bucket amounts, no "t") is
-- rewritten once into running totals, counts unchanged.
local function convert(key, w)
  local head = tonumber(redis.call('HGET', key, 'h'))
  local f = {}
  for j = head - B, head do f[#f + 1] = tostring(j % S) end
  local v = redis.call('HMGET', key, unpack(f))
  local ttl = redis.call('PTTL', key)
  local out, tot = {}, 0
  for k = 1, #f do
    tot = tot + (tonumber(v[k]) or 0)
    out[#out + 1] = f[k]
    out[#out + 1] = tot
  end
  redis.call('DEL', key)
  out[#out + 1] = 'h'; out[#out + 1] = head
  out[#out + 1] = 't'; out[#out + 1] = tot
  out[#out + 1] = 's'; out[#out + 1] = tot
  redis.call('HSET', key, unpack(out))
  redis.call('PEXPIRE', key, ttl > 0 and ttl or w + math.ceil(w / B) + 1000)
end

-- The state of window c.key at now: c.cur (the current bucket), c.head,
-- c.total, c.s_head (what the head's window counts: "s"), c.used (what
-- counts now), c.base (the running total at the end of the last bucket
-- that left), c.fresh (no live state: the hash starts over on the next
-- write). While the head is the current bucket this is one HMGET of three
-- fields; a bucket that just started adds the read of the slot leaving.
local function roll_read(c)
  local cur = bucket_of(now, c.w)
  local v = redis.call('HMGET', c.key, 'h', 't', 's')
  if v[1] and not v[2] then
    convert(c.key, c.w)
    v = redis.call('HMGET', c.key, 'h', 't', 's')
  end
  local head = tonumber(v[1])
  c.cur = cur
  if head == nil or cur - head >= S then
    c.fresh = true
    c.head, c.total, c.s_head, c.used, c.base = cur, 0, 0, 0, 0
    return
  end
  local total = tonumber(v[2]) or 0
  c.head, c.total, c.s_head = head, total, tonumber(v[3]) or 0
  if cur <= head then
    -- The current bucket, or a clock that went back: charged to the head
    -- (a later bucket lives longer: never admits late).
    c.cur = head
    c.used = c.s_head
    c.base = total - c.used
  else
    c.base = tonumber(redis.call('HGET', c.key, tostring(cur % S))) or 0
    c.used = total - c.base
  end
end

-- The running total at the end of bucket j (cur - 60 <= j <= cur). The
-- head's is "t"; its slot is written when the next bucket starts.
local function roll_total_at(c, j)
  if j >= c.head then return c.total end
  return tonumber(redis.call('HGET', c.key, tostring(j % S))) or 0
end

-- Add amt (>= 0) to the current bucket: one HSET of two fields while the
-- head is the current bucket. When a new bucket starts, the old head's
-- slot and the slots of buckets skipped since get the old total, and the
-- expiry is set.
local function roll_write(c, amt)
  local key, cur = c.key, c.cur
  if c.fresh then
    redis.call('DEL', key)
  elseif c.total + amt > CAP then
    -- Rare (2^52 charged in one hash's life): totals restart from the
    -- base, so every value stays exact.
    local f = {}
    for k = 0, B do f[#f + 1] = tostring(k) end
    local v = redis.call('HMGET', key, unpack(f))
    local out = {}
    for k = 1, #f do
      out[#out + 1] = f[k]
      out[#out + 1] = math.max(0, (tonumber(v[k]) or 0) - c.base)
    end
    redis.call('HSET', key, unpack(out))
    c.total = c.total - c.base
    c.base = 0
  end
  local total = c.total + amt
  if not c.fresh and cur == c.head then
    redis.call('HSET', key, 't', total, 's', c.used + amt)
    return
  end
  local f = { 'h', cur, 't', total, 's', c.used + amt }
  if not c.fresh then
    for j = c.head, cur - 1 do
      f[#f + 1] = tostring(j % S)
      f[#f + 1] = c.total
    end
  end
  redis.call('HSET', key, unpack(f))
  redis.call('PEXPIRE', key, c.w + math.ceil(c.w / B) + 1000)
end

-- When amt fits (amt <= limit, used + amt > limit): the first bucket j
-- whose leaving frees enough, found by bisection over the running totals
-- (non-decreasing); the oldest bucket is tried first.
local function roll_retry(c)
  local need = c.total + c.amount - c.limit
  local lo, hi = c.cur - B, c.head
  if roll_total_at(c, lo) >= need then
    hi = lo
  else
    while hi - lo > 1 do
      local mid = floor((lo + hi) / 2)
      if roll_total_at(c, mid) >= need then hi = mid else lo = mid end
    end
  end
  return math.max(bucket_start(hi + S, c.w), now)
end

-- Give back up to -d from bucket j (the charge's), if it still counts.
local function roll_refund(c, j, d)
  local head = c.head
  if c.fresh or j > head or j < c.cur - B then return end
  local f = {}
  for k = j - 1, head - 1 do f[#f + 1] = tostring(k % S) end
  local v = redis.call('HMGET', c.key, unpack(f))
  -- The totals at the end of bucket j - 1 and j: slots, the head's "t", and
  -- for the bucket before the head's window, what that window does not
  -- count.
  local before = (j - 1 == head - S) and (c.total - c.s_head) or (tonumber(v[1]) or 0)
  local at = (j == head) and c.total or (tonumber(v[2]) or 0)
  local take = math.min(-d, at - before)
  if take <= 0 then return end
  local out = { 't', c.total - take, 's', math.max(0, c.s_head - take) }
  for k = 2, #f do
    out[#out + 1] = f[k]
    out[#out + 1] = (tonumber(v[k]) or 0) - take
  end
  redis.call('HSET', c.key, unpack(out))
end

if mode == 'a' then
  local charged = ARGV[2] ~= '' and tonumber(ARGV[2]) or now
  if ARGV[4] ~= '' then
    local held = false
    for i = 1, n do
      if string.lower(ARGV[FIRST + 4 * (i - 1)]) == 'g' and redis.call('ZSCORE', KEYS[i], ARGV[4]) then
        held = true
      end
    end
    if not held then return { 0, now } end
    for i = 1, n do
      if string.lower(ARGV[FIRST + 4 * (i - 1)]) == 'g' then redis.call('ZREM', KEYS[i], ARGV[4]) end
    end
  end
  for i = 1, n do
    local a = FIRST + 4 * (i - 1)
    local kind, param, d, key = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3]), KEYS[i]
    if kind == 'r' and d ~= 0 then
      local c = { key = key, w = tonumber(param) }
      roll_read(c)
      if d > 0 then
        -- Debt is added whatever the limits, but never past CAP.
        d = math.min(d, CAP - c.used)
        if d < 0 then d = 0 end
        roll_write(c, d)
      else
        roll_refund(c, bucket_of(charged, c.w), d)
      end
    elseif kind == 'c' and d ~= 0 then
      local pid, pend = period(param, now)
      local pv = redis.call('HMGET', key, 'p', 'v')
      local v = (tonumber(pv[1]) == pid) and (tonumber(pv[2]) or 0) or nil
      if d > 0 then
        redis.call('HSET', key, 'p', pid, 'v', math.min((v or 0) + d, CAP))
        if v == nil then redis.call('PEXPIRE', key, pend - now + 60000) end
      elseif v ~= nil and period(param, charged) == pid then
        redis.call('HSET', key, 'v', math.max(0, v + d))
      end
    end
  end
  return { 1, now }
end

-- ---- a decision (mode "1") or a peek (mode "0") ----------------------------
local st = {}
local admitted = 1
for i = 1, n do
  local kind, p, l, m, shadow = check_of(i)
  if not kind then return bad(p) end
  -- Every field a check gets, named at once (one allocation).
  local c = { kind = kind, limit = l, amount = m, key = KEYS[i], w = p, cur = 0, head = 0,
              total = 0, s_head = 0, used = 0, base = 0, fresh = false, ok = false,
              pid = 0, pend = 0, same = false, ttl = p }
  if kind == 'r' then
    roll_read(c)
  elseif kind == 'c' then
    c.pid, c.pend = period(p, now)
    local pv = redis.call('HMGET', c.key, 'p', 'v')
    c.same = tonumber(pv[1]) == c.pid
    c.used = c.same and (tonumber(pv[2]) or 0) or 0
  else
    c.used = redis.call('ZCOUNT', c.key, '(' .. now, '+inf')
  end
  c.ok = c.used + m <= l
  if shadow then
    -- Counted past its limit (its refusals are only reported), but
    -- never past CAP; a shadow check has no retry time to give.
    c.amount = math.max(0, math.min(m, CAP - c.used))
  elseif not c.ok then
    admitted = 0
  end
  st[i] = c
end
-- Every argument has passed: from here on nothing fails.

local out = { admitted, now }
local write = admitted == 1 and charge
for i = 1, n do
  local c = st[i]
  local reset, retry = 0, now
  if c.kind == 'r' then
    if write then
      roll_write(c, c.amount)
      reset = bucket_start(c.cur + S, c.w)
    else
      -- Every write goes to the head bucket, so the head is the newest
      -- bucket that counts anything.
      reset = now
      if c.used > 0 then reset = math.max(bucket_start(c.head + S, c.w), now) end
      if not c.ok then
        if c.amount > c.limit then retry = -1 else retry = roll_retry(c) end
      end
    end
  elseif c.kind == 'c' then
    reset = c.pend
    if write then
      redis.call('HSET', c.key, 'p', c.pid, 'v', c.used + c.amount)
      if not c.same then redis.call('PEXPIRE', c.key, c.pend - now + 60000) end
    elseif not c.ok then
      if c.amount > c.limit then retry = -1 else retry = c.pend end
    end
  else
    if write then
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
