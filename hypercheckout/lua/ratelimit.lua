-- One round trip decides a purchase attempt for a buyer and a client address together.
--
-- Each identity has a GCRA bucket (generic cell rate algorithm: one "theoretical arrival time" per key), a strike
-- counter and a ban key. An attempt is allowed only when neither identity is banned and both buckets have room;
-- a refused attempt consumes nothing. Each refusal is a strike for the identity that was over its rate; at
-- ban_after strikes within the strike window that identity is banned. Every key is written together with its
-- expiry in this script, so no key can be left without one (the original's bug).
--
-- Two sorted sets index the identities the dashboard lists, so that it never scans the keyspace: "banned" (score:
-- when the ban ends, Redis time in ms) and "limited" (score: current strikes; capped at LIMITED_MAX members, the
-- fewest strikes dropped first). Members are "user:<id>" / "ip:<address>"; both sets expire when idle.
--
-- A replica that was told "limited" refuses that identity's next attempts itself until the retry time; it sends
-- those refusals along with its next call as extra strikes (ARGV 10, 11), so that they count toward a ban.
--
-- KEYS: 1 ban:user  2 ban:ip  3 tat:user  4 tat:ip  5 strikes:user  6 strikes:ip  7 banned index  8 limited index
-- ARGV: 1 user interval µs (0 = no user limit)  2 user burst  3 ip interval µs (0 = no ip limit)  4 ip burst
--       5 ban_after (0 = never ban)  6 strike window ms  7 ban ms  8 user id  9 client address
--       10 extra strikes for the user  11 extra strikes for the address
-- Returns {verdict, retry_after_ms, identity, strikes}: verdict 0 allowed, 1 rate limited, 2 banned; identity 1
-- user, 2 ip; strikes: the refused identity's strikes so far (verdict 1 only).

local LIMITED_MAX = 1000
local members = {'user:' .. ARGV[8], 'ip:' .. ARGV[9]}

local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])  -- µs, one clock for every replica

for i = 1, 2 do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl > 0 then
    return {2, ttl, i, 0}
  end
end

local function add_strikes(i, count)
  local strikes = redis.call('INCRBY', KEYS[4 + i], count)
  if strikes == count then redis.call('PEXPIRE', KEYS[4 + i], ARGV[6]) end  -- a new counter: its window starts
  return strikes
end

for i = 1, 2 do
  local extra = tonumber(ARGV[9 + i])
  if extra > 0 then add_strikes(i, extra) end
end

local intervals = {tonumber(ARGV[1]), tonumber(ARGV[3])}
local bursts = {tonumber(ARGV[2]), tonumber(ARGV[4])}
local new_tats = {}

for i = 1, 2 do
  local interval = intervals[i]
  if interval > 0 then
    local tat = tonumber(redis.call('GET', KEYS[2 + i]) or now)
    if tat < now then tat = now end
    local allowance = (bursts[i] - 1) * interval
    if tat - now > allowance then
      local retry_ms = math.ceil((tat - now - allowance) / 1000)
      local strikes = add_strikes(i, 1)
      if tonumber(ARGV[5]) > 0 and strikes >= tonumber(ARGV[5]) then
        redis.call('SET', KEYS[i], strikes, 'PX', ARGV[7])
        redis.call('DEL', KEYS[4 + i])
        redis.call('ZREM', KEYS[8], members[i])
        redis.call('ZADD', KEYS[7], math.floor(now / 1000) + tonumber(ARGV[7]), members[i])
        redis.call('PEXPIRE', KEYS[7], ARGV[7])  -- every ban lasts as long: the newest one outlives the others
        return {2, tonumber(ARGV[7]), i, 0}
      end
      redis.call('ZADD', KEYS[8], strikes, members[i])
      if redis.call('ZCARD', KEYS[8]) > LIMITED_MAX then
        redis.call('ZREMRANGEBYRANK', KEYS[8], 0, -LIMITED_MAX - 1)
      end
      redis.call('PEXPIRE', KEYS[8], ARGV[6])
      return {1, retry_ms, i, strikes}
    end
    new_tats[i] = tat + interval
  end
end

for i = 1, 2 do
  if new_tats[i] then
    -- The bucket is full again once now reaches the new TAT: it can expire then.
    redis.call('SET', KEYS[2 + i], new_tats[i], 'PX', math.ceil((new_tats[i] - now) / 1000) + 1)
  end
end
return {0, 0, 0, 0}
