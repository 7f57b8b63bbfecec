-- A node got its first socket of a user.
-- KEYS: state, un:user, nu:node, pending, closed   ARGV: user, node, channel, now
-- The node is not added to p:nodes here: only heartbeats do that, so a heartbeat that has to
-- add it back learns that this node was reaped (and resynchronises).
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
local st = get_state(KEYS[1], ARGV[1])
if st and st[1] then return false end
return set_state(KEYS[1], ARGV[3], ARGV[1], true, ARGV[4], st)
