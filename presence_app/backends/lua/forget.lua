-- A deleted account: drop its state and pending deadline, unless a node still holds it.
-- KEYS: state, un:user, pending, closed   ARGV: user
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
