-- Takes one admin login attempt, or refuses it: the check and the count in one step, so that concurrent guesses
-- cannot all pass the check before any is counted. Every attempt taken counts as a failure until the caller says
-- it succeeded (login_success.lua gives it back then), so an attempt is counted before its token is compared.
--
-- Both counters get their expiry in the same call that creates them (no counter can be left without one). An
-- address that reaches its limit is added to the lockout index (score: when its window ends, Redis time in ms), so
-- the dashboard lists lockouts without scanning the keyspace. All keys share one hash tag: one cluster slot.
--
-- KEYS: 1 the address's counter  2 the total counter  3 lockout index
-- ARGV: 1 window ms  2 failures per address  3 failures in total  4 client address
-- Returns {1} when the attempt is taken, {0, ms until it may try again, 1 if the total cap (else the address's)}.

local window, per_address, total = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local everyone = tonumber(redis.call('GET', KEYS[2]) or '0')
if everyone >= total then
  return {0, redis.call('PTTL', KEYS[2]), 1}
end
local mine = tonumber(redis.call('GET', KEYS[1]) or '0')
if mine >= per_address then
  return {0, redis.call('PTTL', KEYS[1]), 0}
end
local counts = {}
for i = 1, 2 do
  counts[i] = redis.call('INCR', KEYS[i])
  if counts[i] == 1 then redis.call('PEXPIRE', KEYS[i], window) end
end
if counts[1] >= per_address then
  local now = redis.call('TIME')
  local ends = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + redis.call('PTTL', KEYS[1])
  redis.call('ZADD', KEYS[3], ends, ARGV[4])
  redis.call('PEXPIRE', KEYS[3], window)
end
return {1}
