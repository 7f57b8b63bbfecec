-- Shared by the presence scripts (prepended to each): a user's state is the hash field
-- "online|version|last_seen"; every change bumps the version and publishes one event, in the
-- same atomic step.
local function get_state(key, user)
  local raw = redis.call('HGET', key, user)
  if not raw then return nil end
  local online, version, seen = string.match(raw, '^(%d)|(%d+)|(.*)$')
  return {online == '1', tonumber(version), seen}
end
-- Versions are microseconds of Redis's clock, forced to grow: monotonic even after Redis
-- restarts empty.
local function set_state(key, channel, user, online, seen, old)
  local t = redis.call('TIME')
  local v = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if old and old[2] >= v then v = old[2] + 1 end
  local vs = string.format('%d', v)
  redis.call('HSET', key, user, (online and '1' or '0') .. '|' .. vs .. '|' .. seen)
  local ls = 'null'
  if seen ~= '' then ls = cjson.encode(seen) end
  local msg = '{"type":"presence","username":' .. cjson.encode(user) .. ',"online":'
    .. (online and 'true' or 'false') .. ',"last_seen":' .. ls .. ',"version":' .. vs .. '}'
  redis.call('PUBLISH', channel, msg)
  return msg
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- With a grace (ms > 0), a user nobody holds any more waits for their deadline instead of
-- going offline now; NX keeps the first close time if this is repeated.
local function hold(pending, closed, user, seen, grace)
  redis.call('ZADD', pending, 'NX', now_ms() + grace, user)
  redis.call('HSETNX', closed, user, seen)
end
