-- Counts one failed admin login, for the client address and for every address together, in fixed windows.
--
-- Both counters get their expiry in the same call that creates them (no counter can be left without one). An
-- address that reaches its limit is added to the lockout index (score: when its window ends, Redis time in ms), so
-- the dashboard lists lockouts without scanning the keyspace. All keys share one hash tag: one cluster slot.
--
-- KEYS: 1 the address's counter  2 the total counter  3 lockout index
-- ARGV: 1 window ms  2 failures per address  3 client address
-- Returns {failures of this address, failures of all addresses}.

local window = tonumber(ARGV[1])
local counts = {}
for i = 1, 2 do
  counts[i] = redis.call('INCR', KEYS[i])
  if counts[i] == 1 then redis.call('PEXPIRE', KEYS[i], window) end
end
if counts[1] >= tonumber(ARGV[2]) then
  local now = redis.call('TIME')
  local ends = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + redis.call('PTTL', KEYS[1])
  redis.call('ZADD', KEYS[3], ends, ARGV[3])
  redis.call('PEXPIRE', KEYS[3], window)
end
return counts
