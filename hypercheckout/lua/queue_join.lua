-- Gives a buyer its place in a product's waiting room: the next number in order of joining, or the number it got
-- when it joined before (one place per buyer per product). Both keys share the product's hash tag: one cluster
-- slot. Both expire a while after the last join, so a finished sale's queue goes away by itself.
--
-- KEYS: 1 the product's counter  2 the product's buyers (hash: user id -> number)
-- ARGV: 1 user id  2 expiry ms
-- Returns the buyer's number.

local number = redis.call('HGET', KEYS[2], ARGV[1])
if number then
  return tonumber(number)
end
number = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], ARGV[1], number)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return number
