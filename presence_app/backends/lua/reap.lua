-- Detach every user of a dead (or forced, or handed-over) node.
-- KEYS: state, nu:node, alive:node, nodes, pending, closed
-- ARGV: node, channel, now, prefix, force, grace ms (0: offline now; a handover otherwise)
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local out = {}
local grace = tonumber(ARGV[6])
for _, user in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local un = ARGV[4] .. ':un:' .. user
  redis.call('SREM', un, ARGV[1])
  if redis.call('SCARD', un) == 0 then
    local st = get_state(KEYS[1], user)
    if grace > 0 and st and st[1] then
      hold(KEYS[5], KEYS[6], user, ARGV[3], grace)
    elseif not st or st[1] then
      table.insert(out, set_state(KEYS[1], ARGV[2], user, false, ARGV[3], st))
    end
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[1])
return out
