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
--           period of the charge) whatever the limits; returns {1, now};
--           "b": a batch of decisions on the same checks, each decided
--           (and charged if all fit) in turn as if by its own "1" call, in
--           one read and one write of each counter (no gauge check)
-- ARGV[4]   modes "1" and "b": the latest time (ms, this script's clock) at
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
-- and in mode "b", for each further decision of the batch: its deadline
-- (as ARGV[4]) and one amount per check.
--
-- Returns { admitted, now, then per check: ok, used, reset_ms, retry_ms }
-- with retry_ms -1 for "never" (the amount alone is over the limit); a
-- charged decision returns { 1, now, then per check: used } (what it
-- counted before this charge; each check's ok is used + amount <= limit,
-- its retry now, its reset what the caller computes from now: the end of
-- the bucket of now's window, the end of now's period). A batch returns
-- one such reply per decision, in order, as an array of them.
--
-- Every argument is checked before the first write: a bad one is an error
-- reply and nothing is written (no script stops halfway). Every number is
-- an integer (as tonumber reads it: "1e3" is 1000, "1.5", "nan" and "inf"
-- are refused) within its range. Amounts and limits are within MAX
-- (LIM_PRICE_MAX of limiter/limits.h, the larger of the two caps), and
-- every counter value written saturates at CAP, so all arithmetic here
-- stays on integers exactly representable in a Lua number (below 2^53):
-- MAX + MAX < CAP, CAP + MAX < 2^53; a window's running total restarts
-- from its base before it would pass CAP.
--
-- Cost: in the steady state a rolling window is one read and one write of
-- its hash's first three fields, a calendar counter one read and one
-- write; a refusal's retry moment is the oldest bucket's slot, else a
-- bisection (at most 6 reads), never a walk over the buckets. Redis runs
-- this file's body on every call, and in Redis's CPU per decision the Lua
-- instructions run are the part this file decides: the decision path is
-- kept short (about 640 instructions for three checks), with few
-- functions, one flat table per check made whole at once, no string
-- scanning, the globals it uses often (ARGV, KEYS, redis.call) as locals,
-- and the counts of a steady write as integer strings (string.format %d;
-- a Lua number given to redis.call is formatted with %.17g, several times
-- dearer). What only an adjust, a refusal or an old layout needs is made
-- only on that path.
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

local ARGV, KEYS, call, fmt = ARGV, KEYS, redis.call, string.format
local MAX = 1125899906842624     -- 2^50 = LIM_PRICE_MAX (>= LIM_UNITS_MAX)
local TMAX = 140737488355328     -- 2^47 ms (year 6429): now * 60 stays below 2^53
local CAP = 4 * MAX               -- 2^52: the most a counter ever holds
local B, S = 60, 61               -- buckets a window counts: 60 of w/60, plus the current

local BAD = 'ERR ratewall acquire: bad argument: '

-- ---- validation: nothing is written before all of it has passed ----------
-- v as an integer within [lo, hi], or nil (x % 1 is nan for nan and inf).
local function int(v, lo, hi)
  local x = tonumber(v)
  if x and x % 1 == 0 and x >= lo and x <= hi then return x end
  return nil
end
local mode = ARGV[3]
if mode ~= '1' and mode ~= '0' and mode ~= 'a' and mode ~= 'b' then
  return redis.error_reply(BAD .. 'mode')
end
local n = #KEYS
-- Decisions in this call (more than one only in a batch).
local K = 1
if mode == 'b' then
  local rest = #ARGV - 4 - 4 * n
  if rest < 0 or rest % (n + 1) ~= 0 then return redis.error_reply(BAD .. 'count') end
  K = 1 + rest / (n + 1)
elseif #ARGV ~= 4 + 4 * n then
  return redis.error_reply(BAD .. 'count')
end
-- Times: "" (none) or ms since 1970 up to TMAX, so that every bucket
-- index (now * 60 / window, windows of 1 ms and more) is an exact integer:
-- past 2^53, j and j + 1 are the same number and a loop over buckets never
-- ends.
if ARGV[1] ~= '' and not int(ARGV[1], 0, TMAX) then return redis.error_reply(BAD .. 'now') end
if mode == 'a' and ARGV[2] ~= '' and not int(ARGV[2], 0, TMAX) then
  return redis.error_reply(BAD .. 'charged')
end
if mode ~= 'a' and mode ~= '0' and ARGV[4] ~= '' and not int(ARGV[4], 0, TMAX) then
  return redis.error_reply(BAD .. 'deadline')
end
local lo = (mode == 'a') and -MAX or 0

-- The values of check i (kind, param, limit, amount, shadow), or nil and
-- what is wrong. A decision checks each as it reads its counter (reads
-- write nothing), an adjust all of them before its first write. A shadow
-- limit's check comes in capitals: counted, never refusing.
local function check_of(i, lo)
  local a = 1 + 4 * i
  local kind, param = ARGV[a], ARGV[a + 1]
  local shadow = false
  if kind ~= 'r' and kind ~= 'c' and kind ~= 'g' then
    if kind == 'R' then kind = 'r'
    elseif kind == 'C' then kind = 'c'
    elseif kind == 'G' then kind = 'g'
    else return nil, 'kind of check ' .. i end
    shadow = true
  end
  -- The windows a limit has and the amount of a request counter are
  -- recognized as strings, without parsing (ARGV strings are interned:
  -- comparing two is comparing two pointers); any other value is parsed.
  local p = param
  if kind == 'c' then
    if param ~= 'd' and param ~= 'm' then return nil, 'period of check ' .. i end
  elseif param == '60000' and kind == 'r' then
    p = 60000
  elseif param == '1000' and kind == 'r' then
    p = 1000
  elseif param == '3600000' and kind == 'r' then
    p = 3600000
  else
    p = int(param, 1, 1099511627776) -- 2^40 ms
    if not p then return nil, (kind == 'r' and 'window' or 'lease ttl') .. ' of check ' .. i end
  end
  local l = int(ARGV[a + 2], 0, 1125899906842624)
  if not l then return nil, 'limit of check ' .. i end
  local m = ARGV[a + 3]
  if m == '1' then
    m = 1
  else
    m = int(m, lo, 1125899906842624)
    if not m then return nil, 'amount of check ' .. i end
  end
  return kind, p, l, m, shadow
end
if mode == 'a' then
  for i = 1, n do
    local kind, why = check_of(i, lo)
    if not kind then return redis.error_reply(BAD .. why) end
  end
end
-- The further decisions of a batch: a deadline and n amounts each.
for k = 2, K do
  local b = 5 + 4 * n + (k - 2) * (n + 1)
  if ARGV[b] ~= '' and not int(ARGV[b], 0, TMAX) then
    return redis.error_reply(BAD .. 'deadline of decision ' .. k)
  end
  for i = 1, n do
    local m = ARGV[b + i]
    if m ~= '1' and not int(m, 0, MAX) then
      return redis.error_reply(BAD .. 'amount of decision ' .. k)
    end
  end
end
-- ---------------------------------------------------------------------------

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = call('TIME')
  now = t[1] * 1000 + math.floor(t[2] / 1000)
end
if mode == '1' and ARGV[4] ~= '' and now > tonumber(ARGV[4]) then
  return { -1, now } -- too late: the caller has moved on; nothing written
end

-- ceil(j * w / 60): the first ms of bucket j of a window of w ms, without
-- j * w (past 2^53 for second windows).
local function bucket_start(j, w)
  local q = math.floor(j / 60)
  return q * w + math.ceil((j - q * 60) * w / 60)
end

-- Period id and end (first ms of the next period) of time t.
local function period(per, t)
  local floor = math.floor
  local day = floor(t / 86400000)
  if per == 'd' then return day, (day + 1) * 86400000 end
  -- The civil year and month of a day number (days since 1970-01-01,
  -- proleptic Gregorian), and the day number of the first of the next.
  local z = day + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524)
                          - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  -- days_from_civil(ny, nm, 1)
  if nm <= 2 then ny = ny - 1 end
  era = floor(ny / 400)
  yoe = ny - era * 400
  mp = (nm + 9) % 12
  doy = floor((153 * mp + 2) / 5)
  doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return y * 12 + m - 1, (era * 146097 + doe - 719468) * 86400000
end

-- ---- rolling windows ------------------------------------------------------
-- The state of check i is one flat table, made whole at once (a table
-- filled field by field grows, and is rebuilt each time it doubles); for a
-- rolling window:
--   c[1] "r"   c[2] key    c[3] limit   c[4] amount   c[5] used (now)
--   c[6] ok    c[7] w (window ms)       c[8] cur (the bucket charged)
--   c[9] head  c[10] total ("t")        c[11] base (the running total at
--   the end of the last bucket that left)   c[12] fresh (no live state: the
--   hash starts over on the next write)     c[13] s_head ("s": what the
--   head's window counts)
-- for a calendar counter: c[1] "c" ... c[6] as above, c[7] period end,
-- c[8] period id, c[9] same (the counter is of this period);
-- for a gauge: c[1] "g" ... c[6], c[7] lease ttl;
-- and for every kind c[14], what the decisions of a batch charged and is
-- not written yet, and c[15] shadow (counted, never refusing).

-- The state of window key (w ms) at now, for a check of limit l, amount m.
-- While the head is the current bucket this is one HMGET of three fields;
-- a bucket that just started adds the read of the slot leaving.
local function roll_read(key, l, m, w, shadow, now)
  local cur = math.floor(now * 60 / w)
  local v = call('HMGET', key, 'h', 't', 's')
  if v[1] and not v[2] then
    -- A hash written by the earlier layout (per-bucket amounts, no "t"):
    -- rewritten once into running totals, counts unchanged.
    local head = tonumber(v[1])
    local f = {}
    for j = head - 60, head do f[#f + 1] = tostring(j % 61) end
    local old = call('HMGET', key, unpack(f))
    local ttl = call('PTTL', key)
    local out, tot = {}, 0
    for k = 1, #f do
      tot = tot + (tonumber(old[k]) or 0)
      out[#out + 1] = f[k]
      out[#out + 1] = tot
    end
    call('DEL', key)
    out[#out + 1] = 'h'; out[#out + 1] = head
    out[#out + 1] = 't'; out[#out + 1] = tot
    out[#out + 1] = 's'; out[#out + 1] = tot
    call('HSET', key, unpack(out))
    call('PEXPIRE', key, ttl > 0 and ttl or w + math.ceil(w / 60) + 1000)
    v = call('HMGET', key, 'h', 't', 's')
  end
  -- Fields this script wrote are integers: read by coercion (v + 0, half
  -- the cost of tonumber); a missing one is false.
  local head = v[1] and v[1] + 0
  if not head or cur - head >= 61 then
    return { 'r', key, l, m, 0, false, w, cur, cur, 0, 0, true, 0, 0, shadow }
  end
  local total = v[2] and v[2] + 0 or 0
  local s_head = v[3] and v[3] + 0 or 0
  if cur <= head then
    -- The current bucket, or a clock that went back: charged to the head
    -- (a later bucket lives longer: never admits late).
    return { 'r', key, l, m, s_head, false, w, head, head, total, total - s_head, false,
             s_head, 0, shadow }
  end
  local base = call('HGET', key, cur % 61)
  base = base and base + 0 or 0
  return { 'r', key, l, m, total - base, false, w, cur, head, total, base, false, s_head, 0,
           shadow }
end

-- Add amt (>= 0) to the current bucket of window c (read at now): one HSET
-- of two fields while the head is the current bucket. When a new bucket
-- starts, the old head's slot and the slots of buckets skipped since get
-- the old total, and the expiry is set.
local function roll_write(c, amt)
  local key, cur, fresh = c[2], c[8], c[12]
  if not fresh and c[10] + amt > 4503599627370496 then -- CAP
    -- Rare (2^52 charged in one hash's life): totals restart from the
    -- base, so every value stays exact.
    local f = {}
    for k = 0, 60 do f[#f + 1] = tostring(k) end
    local v = call('HMGET', key, unpack(f))
    local out = {}
    for k = 1, #f do
      out[#out + 1] = f[k]
      out[#out + 1] = math.max(0, (tonumber(v[k]) or 0) - c[11])
    end
    call('HSET', key, unpack(out))
    c[10] = c[10] - c[11]
    c[11] = 0
  end
  local old = c[10]
  if cur == c[9] and not fresh then
    call('HSET', key, 't', fmt('%d', old + amt), 's', fmt('%d', c[5] + amt))
    return
  end
  if fresh then call('DEL', key) end
  local f = { 'h', cur, 't', old + amt, 's', c[5] + amt }
  if not fresh then
    for j = c[9], cur - 1 do
      f[#f + 1] = tostring(j % 61)
      f[#f + 1] = old
    end
  end
  call('HSET', key, unpack(f))
  local w = c[7]
  call('PEXPIRE', key, w + math.ceil(w / 60) + 1000)
end

if mode == 'a' then
  -- ---- an adjust (reconcile, debt, refund): whatever the limits ----------
  -- Give back up to -d from bucket j (the charge's) of window c, if it
  -- still counts.
  local function roll_refund(c, j, d, now)
    local head, total, s_head = c[9], c[10], c[13]
    if c[12] or j > head or j < c[8] - B then return end
    local f = {}
    for k = j - 1, head - 1 do f[#f + 1] = tostring(k % S) end
    local v = call('HMGET', c[2], unpack(f))
    -- The totals at the end of bucket j - 1 and j: slots, the head's "t",
    -- and for the bucket before the head's window, what that window does
    -- not count.
    local before = (j - 1 == head - S) and (total - s_head) or (tonumber(v[1]) or 0)
    local at = (j == head) and total or (tonumber(v[2]) or 0)
    local take = math.min(-d, at - before)
    if take <= 0 then return end
    local out = { 't', total - take, 's', math.max(0, s_head - take) }
    for k = 2, #f do
      out[#out + 1] = f[k]
      out[#out + 1] = (tonumber(v[k]) or 0) - take
    end
    call('HSET', c[2], unpack(out))
  end
  local charged = ARGV[2] ~= '' and tonumber(ARGV[2]) or now
  if ARGV[4] ~= '' then
    local held = false
    for i = 1, n do
      if string.lower(ARGV[1 + 4 * i]) == 'g' and call('ZSCORE', KEYS[i], ARGV[4]) then
        held = true
      end
    end
    if not held then return { 0, now } end
    for i = 1, n do
      if string.lower(ARGV[1 + 4 * i]) == 'g' then call('ZREM', KEYS[i], ARGV[4]) end
    end
  end
  for i = 1, n do
    local a = 1 + 4 * i
    local kind, param, d, key = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 3]), KEYS[i]
    if kind == 'r' and d ~= 0 then
      local c = roll_read(key, 0, 0, tonumber(param), false, now)
      if d > 0 then
        -- Debt is added whatever the limits, but never past CAP.
        d = math.min(d, CAP - c[5])
        if d < 0 then d = 0 end
        roll_write(c, d)
      else
        roll_refund(c, math.floor(charged * B / c[7]), d, now)
      end
    elseif kind == 'c' and d ~= 0 then
      local pid, pend = period(param, now)
      local pv = call('HMGET', key, 'p', 'v')
      local v = (tonumber(pv[1]) == pid) and (tonumber(pv[2]) or 0) or nil
      if d > 0 then
        call('HSET', key, 'p', pid, 'v', math.min((v or 0) + d, CAP))
        if v == nil then call('PEXPIRE', key, pend - now + 60000) end
      elseif v ~= nil and period(param, charged) == pid then
        call('HSET', key, 'v', math.max(0, v + d))
      end
    end
  end
  return { 1, now }
end

-- ---- decisions (modes "1", "b") or a peek (mode "0") ---------------------
-- Every counter is read once. Each decision then sees the counts as the
-- decisions before it in the batch left them: c[14] is what those charged
-- and is not written yet (written once, at the end, or before a refusal
-- needs the counters as they stand: its reset and retry read them).
local st = { false, false, false, false }
for i = 1, n do
  local kind, p, l, m, shadow = check_of(i, 0)
  if not kind then return redis.error_reply(BAD .. p) end
  local key = KEYS[i]
  if kind == 'r' then
    st[i] = roll_read(key, l, m, p, shadow, now)
  elseif kind == 'c' then
    local pid, pend = period(p, now)
    local pv = call('HMGET', key, 'p', 'v')
    local same = pv[1] and pv[1] + 0 == pid
    st[i] = { 'c', key, l, m, same and pv[2] and pv[2] + 0 or 0, false, pend, pid, same,
              0, 0, 0, 0, 0, shadow }
  elseif mode == 'b' then
    return redis.error_reply(BAD .. 'gauge in a batch')
  else
    st[i] = { 'g', key, l, m, call('ZCOUNT', key, '(' .. now, '+inf'), false, p,
              0, 0, 0, 0, 0, 0, 0, shadow }
  end
end
-- Every argument has passed: from here on nothing fails.

-- Write what check c's decisions charged since its last write (c[14]);
-- with again (more decisions follow), its state as it then stands (a
-- window's is read again).
local function flush(c, again)
  local amt, kind = c[14], c[1]
  if amt == 0 and kind ~= 'g' then return c end -- a lease is held whatever its amount
  if kind == 'r' then
    roll_write(c, amt)
    if again then
      local r = roll_read(c[2], c[3], c[4], c[7], c[15], now)
      r[6] = c[6]
      return r
    end
    return c
  elseif kind == 'c' then
    if c[9] then
      -- The period's counter, added to (an amount of 1 as a string: no
      -- number to turn into one).
      call('HINCRBY', c[2], 'v', amt == 1 and '1' or amt)
    else
      call('HSET', c[2], 'p', c[8], 'v', c[5] + amt)
      call('PEXPIRE', c[2], c[7] - now + 60000)
      c[9] = true
    end
    c[5] = c[5] + amt
  else
    local key, ttl = c[2], c[7]
    call('ZREMRANGEBYSCORE', key, '-inf', now)
    call('ZADD', key, now + ttl, ARGV[2])
    -- Expiries are relative to the script's clock. A new set has no TTL,
    -- which GT would take for an infinite one.
    if c[5] == 0 then
      call('PEXPIRE', key, ttl + 1000)
    else
      call('PEXPIRE', key, ttl + 1000, 'GT')
    end
  end
  c[14] = 0
  return c
end

-- When amt fits (amt <= limit, used + amt > limit): the first bucket j
-- whose leaving frees enough, found by bisection over the running totals
-- (non-decreasing); the oldest bucket is tried first. Made only when
-- something is refused.
local roll_retry

local replies = mode == 'b' and {} or nil
local pending = false -- something charged and not written yet
for k = 1, K do
  local late = false
  if k > 1 then
    local b = 5 + 4 * n + (k - 2) * (n + 1)
    late = ARGV[b] ~= '' and now > tonumber(ARGV[b])
    for i = 1, n do
      local m = ARGV[b + i]
      st[i][4] = m == '1' and 1 or tonumber(m)
    end
  elseif mode == 'b' then
    late = ARGV[4] ~= '' and now > tonumber(ARGV[4])
  end
  local admitted = 1
  for i = 1, n do
    local c = st[i]
    local ok = c[5] + c[14] + c[4] <= c[3]
    c[6] = ok
    if not ok and not c[15] then admitted = 0 end
  end
  if late then
    replies[k] = { -1, now } -- this decision's caller has moved on
    admitted = -1
  elseif admitted == 0 and pending then
    -- The counters as they stand, for the refusal's reset and retry.
    for i = 1, n do st[i] = flush(st[i], true) end
    pending = false
  end
  -- The reply is made whole at once for up to six checks charged, four
  -- not (a table grown field by field is rebuilt each time it doubles).
  local out
  if admitted == 1 and mode ~= '0' then
    -- Charged: { 1, now, then per check what it counted before }.
    if n <= 6 then
      out = { 1, now, 0, 0, 0, 0, 0, 0 }
      out[3 + n] = nil -- the reply ends at the first nil
    else
      out = { 1, now }
    end
    for i = 1, n do
      local c = st[i]
      local used, m = c[5] + c[14], c[4]
      if c[15] then
        -- A shadow limit is counted past its limit (its refusals are only
        -- reported), but never past CAP.
        m = math.max(0, math.min(m, CAP - used))
      end
      c[14] = c[14] + m
      out[i + 2] = used
    end
    pending = true
  elseif admitted >= 0 then
    -- Refused, or a peek: { admitted, now, then per check ok, used,
    -- reset, retry }.
    if n <= 4 then
      out = { admitted, now, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
      out[3 + 4 * n] = nil
    else
      out = { admitted, now }
    end
    if not roll_retry then
      roll_retry = function(c, now)
        local key, head, total = c[2], c[9], c[10]
        -- The running total at the end of bucket j (cur - 60 <= j <= cur).
        -- The head's is "t"; its slot is written when the next bucket
        -- starts.
        local function total_at(j)
          if j >= head then return total end
          return tonumber(call('HGET', key, tostring(j % 61))) or 0
        end
        local need = total + c[4] - c[3]
        local lo, hi = c[8] - 60, head
        if total_at(lo) >= need then
          hi = lo
        else
          while hi - lo > 1 do
            local mid = math.floor((lo + hi) / 2)
            if total_at(mid) >= need then hi = mid else lo = mid end
          end
        end
        return math.max(bucket_start(hi + 61, c[7]), now)
      end
    end
    for i = 1, n do
      local c = st[i]
      local kind, used, ok = c[1], c[5] + c[14], c[6]
      local reset, retry = 0, now
      if kind == 'r' then
        -- Every write goes to the head bucket, so the head is the newest
        -- bucket that counts anything.
        reset = now
        if used > 0 then reset = math.max(bucket_start(c[9] + S, c[7]), now) end
        if not ok then
          if c[4] > c[3] then retry = -1 else retry = roll_retry(c, now) end
        end
      elseif kind == 'c' then
        reset = c[7]
        if not ok then
          if c[4] > c[3] then retry = -1 else retry = c[7] end
        end
      elseif not ok then
        if c[4] > c[3] then retry = -1 else retry = now + 1000 end
      end
      local j = 4 * i - 2
      out[j + 1] = ok and 1 or 0
      out[j + 2] = used
      out[j + 3] = reset
      out[j + 4] = retry
    end
  end
  if replies then
    if out then replies[k] = out end
  else
    replies = out
  end
end
if pending then
  for i = 1, n do flush(st[i], false) end
end
return replies
