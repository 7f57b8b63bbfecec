-- Give a turn back, counting a failure or clearing them after a success.
-- KEYS: failures, turns   ARGV: max failures, window ms, token, outcome (ok|failed|none)
redis.call('ZREM', KEYS[2], ARGV[3])
if ARGV[4] == 'ok' then
  redis.call('DEL', KEYS[1])
elseif ARGV[4] == 'failed' then
  local max, window = tonumber(ARGV[1]), tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(max + 1))
  redis.call('PEXPIRE', KEYS[1], window)
end
return 0
