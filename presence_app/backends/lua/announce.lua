-- A new account: published once as offline, never seen.
-- KEYS: state   ARGV: user, channel
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return false end
return set_state(KEYS[1], ARGV[2], ARGV[1], false, '', nil)
