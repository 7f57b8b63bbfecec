-- Take a turn to check a password of one (name, address) pair.
-- KEYS: failures, turns   ARGV: max failures, window ms, lease ms, token
-- Returns {1, ms to wait} when locked, {0, 0} when every turn is taken, {2, 0} with a turn.
local max, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local failed = redis.call('ZCARD', KEYS[1])
if failed >= max then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, math.max(tonumber(oldest[2]) + window - now, 1)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if failed + redis.call('ZCARD', KEYS[2]) >= max then return {0, 0} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {2, 0}
