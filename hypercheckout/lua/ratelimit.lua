-- Decides purchase attempts, each for one or more identities (a buyer, a client address) together, one after
-- another in the order given. A replica sends every attempt of one event-loop tick in one call (one call per
-- shard on a Redis Cluster): one round trip for all of them, and the same decisions as one call each in that
-- order, since each attempt sees what the ones before it wrote. They share one reading of the clock.
--
-- Each identity has a GCRA bucket (generic cell rate algorithm: one "theoretical arrival time" per key), a strike
-- counter and a ban key. An attempt is allowed only when no identity is banned and every bucket has room; a
-- refused attempt consumes nothing. Each refusal is a strike for the identity that was over its rate; at
-- ban_after strikes within the strike window that identity is banned. Every key is written together with its
-- expiry in this script, so no key can be left without one (the original's bug).
--
-- Two sorted sets per shard index the identities the dashboard lists, so that it never scans the keyspace:
-- "banned" (score: when the ban ends, Redis time in ms; ended ones are dropped at each new ban) and "limited"
-- (score: current strikes; capped at LIMITED_MAX members, the fewest strikes dropped first). Members are
-- "user:<id>" / "ip:<address>"; the sets expire when idle. An identity's keys and its shard's two indexes share
-- one hash tag, so on a Redis Cluster a call for one identity runs within one slot. On one Redis server the
-- limiter passes both identities in one call; on a cluster, one call each, in parallel (see limiter.py for how
-- the answers combine).
--
-- A replica that was told "limited" refuses that identity's next attempts itself until the retry time; it sends
-- those refusals along with its next call as extra strikes, so that they count toward a ban.
--
-- KEYS: five per identity, in order: ban, tat, strikes, banned index, limited index; the attempts' one after another
-- ARGV: 1 ban_after (0 = never ban)  2 strike window ms  3 ban ms
--       then per attempt: its number of identities, then four per identity: interval µs (0 = no limit), burst,
--       member, extra strikes
-- Returns four numbers per attempt, {verdict, retry_after_ms, identity, strikes}: verdict 0 allowed, 1 rate
-- limited, 2 banned; identity: the refused one's position in its attempt (1, 2); strikes: its strikes so far
-- (verdict 1 only).

local LIMITED_MAX = 1000
local ban_after, strike_window, ban_ms = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])

local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])  -- µs, one clock for every replica

-- One attempt: ``count`` identities whose keys follow KEYS[first_key] and whose arguments follow ARGV[first_arg].
local function decide(first_key, first_arg, count)
  local function key(i, n) return KEYS[first_key + (i - 1) * 5 + n] end
  local function arg(i, n) return ARGV[first_arg + (i - 1) * 4 + n] end

  for i = 1, count do
    local ttl = redis.call('PTTL', key(i, 1))
    if ttl > 0 then
      return 2, ttl, i, 0
    end
  end

  local function add_strikes(i, n)
    local strikes = redis.call('INCRBY', key(i, 3), n)
    if strikes == n then redis.call('PEXPIRE', key(i, 3), strike_window) end  -- a new counter: its window starts
    return strikes
  end

  for i = 1, count do
    local extra = tonumber(arg(i, 4))
    if extra > 0 then add_strikes(i, extra) end
  end

  local new_tats = {}
  for i = 1, count do
    local interval = tonumber(arg(i, 1))
    if interval > 0 then
      local tat = tonumber(redis.call('GET', key(i, 2)) or now)
      if tat < now then tat = now end
      local allowance = (tonumber(arg(i, 2)) - 1) * interval
      if tat - now > allowance then
        local retry_ms = math.ceil((tat - now - allowance) / 1000)
        local strikes = add_strikes(i, 1)
        local member = arg(i, 3)
        if ban_after > 0 and strikes >= ban_after then
          redis.call('SET', key(i, 1), strikes, 'PX', ban_ms)
          redis.call('DEL', key(i, 3))
          redis.call('ZREM', key(i, 5), member)
          -- Bans that ended leave the index here, not only when someone lists it: a stream of bans keeps it alive.
          redis.call('ZREMRANGEBYSCORE', key(i, 4), '-inf', math.floor(now / 1000))
          redis.call('ZADD', key(i, 4), math.floor(now / 1000) + ban_ms, member)
          redis.call('PEXPIRE', key(i, 4), ban_ms)  -- every ban lasts as long: the newest one outlives the others
          return 2, ban_ms, i, 0
        end
        redis.call('ZADD', key(i, 5), strikes, member)
        if redis.call('ZCARD', key(i, 5)) > LIMITED_MAX then
          redis.call('ZREMRANGEBYRANK', key(i, 5), 0, -LIMITED_MAX - 1)
        end
        redis.call('PEXPIRE', key(i, 5), strike_window)
        return 1, retry_ms, i, strikes
      end
      new_tats[i] = tat + interval
    end
  end

  for i = 1, count do
    if new_tats[i] then
      -- The bucket is full again once now reaches the new TAT: it can expire then.
      redis.call('SET', key(i, 2), new_tats[i], 'PX', math.ceil((new_tats[i] - now) / 1000) + 1)
    end
  end
  return 0, 0, 0, 0
end

local answers = {}
local first_key, position = 0, 4
while position <= #ARGV do
  local count = tonumber(ARGV[position])
  local verdict, retry_ms, which, strikes = decide(first_key, position, count)
  answers[#answers + 1] = verdict
  answers[#answers + 1] = retry_ms
  answers[#answers + 1] = which
  answers[#answers + 1] = strikes
  first_key = first_key + count * 5
  position = position + 1 + count * 4
end
return answers
