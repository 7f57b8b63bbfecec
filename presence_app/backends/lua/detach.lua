-- A node closed its last socket of a user.
-- KEYS: state, un:user, nu:node, pending, closed   ARGV: user, node, channel, now, grace ms
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[2]) > 0 then return false end
local st = get_state(KEYS[1], ARGV[1])
if st and not st[1] then return false end
local grace = tonumber(ARGV[5])
if grace > 0 and st then
  hold(KEYS[4], KEYS[5], ARGV[1], ARGV[4], grace)
  return false
end
return set_state(KEYS[1], ARGV[3], ARGV[1], false, ARGV[4], st)
