-- Make sure a user no node holds is offline (a resync after an outage).
-- KEYS: state, un:user, pending, closed   ARGV: user, channel, last_seen
if redis.call('SCARD', KEYS[2]) > 0 then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local st = get_state(KEYS[1], ARGV[1])
if st and not st[1] then return false end
return set_state(KEYS[1], ARGV[2], ARGV[1], false, ARGV[3], st)
