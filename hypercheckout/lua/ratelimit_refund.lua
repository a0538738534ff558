-- Gives back the room one allowed call of ratelimit.lua took from an identity's bucket, when the attempt was
-- refused after all by the other identity's call (on a Redis Cluster the two are separate calls).
--
-- GCRA keeps one number per bucket, the theoretical arrival time, and an allowed attempt moved it forward by
-- exactly one interval: moving it back by one interval undoes that, whatever other attempts did in between.
--
-- KEYS: 1 tat
-- ARGV: 1 interval µs
-- Returns 1 if there was something to give back.

local tat = redis.call('GET', KEYS[1])
if not tat then return 0 end
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local earlier = tonumber(tat) - tonumber(ARGV[1])
if earlier <= now then
  redis.call('DEL', KEYS[1])  -- a bucket at or behind now is a full bucket
else
  redis.call('SET', KEYS[1], earlier, 'PX', math.ceil((earlier - now) / 1000) + 1)
end
return 1
