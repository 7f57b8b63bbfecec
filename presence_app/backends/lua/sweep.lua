-- Publish "offline" for the expired pending users no node holds again.
-- KEYS: state, pending, closed   ARGV: channel, prefix, batch size
-- Every live process runs this; being one atomic step, only one of them publishes a user.
-- Returns {ms until the next deadline (-1: none), {events...}}.
local now = now_ms()
local out = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0,
                                 tonumber(ARGV[3]))) do
  local seen = redis.call('HGET', KEYS[3], user)
  redis.call('ZREM', KEYS[2], user)
  redis.call('HDEL', KEYS[3], user)
  if redis.call('SCARD', ARGV[2] .. ':un:' .. user) == 0 then
    local st = get_state(KEYS[1], user)
    if st and st[1] then
      table.insert(out, set_state(KEYS[1], ARGV[1], user, false, seen or st[3], st))
    end
  end
end
local wait = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then wait = math.max(tonumber(first[2]) - now, 0) end
return {wait, out}
