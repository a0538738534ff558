-- An admin login attempt that login_attempt.lua counted turned out right: the total gets it back (unless its window
-- ended meanwhile: a DECR then would create a counter without an expiry), and the address starts again from 0.
--
-- KEYS: 1 the total counter  2 the address's counter  3 lockout index
-- ARGV: 1 client address

if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DECR', KEYS[1])
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
