"""The presence store in Redis: Lua scripts make every transition atomic across processes.

Keys (all under the configured prefix ``p``):
  ``p:state``        hash user -> "online|version|last_seen"
  ``p:un:<user>``    set of nodes holding the user
  ``p:nu:<node>``    set of users a node holds
  ``p:nodes``        set of known nodes
  ``p:alive:<node>`` liveness key with a TTL of the heartbeat timeout
  ``p:epoch``        random token set once; a different or missing one means Redis was emptied
  ``p:pending``      sorted set user -> offline deadline (ms, Redis clock), with a grace only
  ``p:closed``       hash user -> when the user's last socket closed (the offline last_seen)

Deadlines use Redis's clock (``TIME``), never a process's: processes may disagree on the time.
"""
from __future__ import annotations

import secrets

from presence_app.backends.broker import RedisBroker
from presence_app.backends.store import PresenceStore, UserState

_LIB = r"""
local function get_state(key, user)
  local raw = redis.call('HGET', key, user)
  if not raw then return nil end
  local online, version, seen = string.match(raw, '^(%d)|(%d+)|(.*)$')
  return {online == '1', tonumber(version), seen}
end
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
"""

# KEYS: state, un:user, nu:node, pending, closed   ARGV: user, node, channel, now
# The node is not added to p:nodes here: only heartbeats do that, so a heartbeat that has to
# add it back learns that this node was reaped (and resynchronises).
_ATTACH = _LIB + r"""
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
local st = get_state(KEYS[1], ARGV[1])
if st and st[1] then return false end
return set_state(KEYS[1], ARGV[3], ARGV[1], true, ARGV[4], st)
"""

# KEYS: state, un:user, nu:node, pending, closed   ARGV: user, node, channel, now, grace ms
_DETACH = _LIB + r"""
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
"""

# KEYS: state, un:user, pending, closed   ARGV: user, channel, last_seen
_SETTLE = _LIB + r"""
if redis.call('SCARD', KEYS[2]) > 0 then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local st = get_state(KEYS[1], ARGV[1])
if st and not st[1] then return false end
return set_state(KEYS[1], ARGV[2], ARGV[1], false, ARGV[3], st)
"""

# KEYS: state   ARGV: user, channel
_ANNOUNCE = _LIB + r"""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return false end
return set_state(KEYS[1], ARGV[2], ARGV[1], false, '', nil)
"""

# KEYS: state, nu:node, alive:node, nodes, pending, closed
# ARGV: node, channel, now, prefix, force, grace ms (0: offline now; a handover otherwise)
_REAP = _LIB + r"""
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
"""

# KEYS: state, pending, closed   ARGV: channel, prefix, batch size
# Every live process runs this; being one atomic step, only one of them publishes a user.
# Returns {ms until the next deadline (-1: none), {events...}}.
_SWEEP = _LIB + r"""
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
"""

# KEYS: state, un:user, pending, closed   ARGV: user
_FORGET = """
if redis.call('SCARD', KEYS[2]) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""

SWEEP_BATCH = 1000  # users finalised per script call: keeps each atomic step short


class RedisStore(PresenceStore):
    def __init__(self, broker: RedisBroker, prefix: str, grace: float = 0.0) -> None:
        super().__init__(grace)
        self.redis = broker.client
        self.channel = broker.channel
        self.p = prefix
        self._attach = self.redis.register_script(_ATTACH)
        self._detach = self.redis.register_script(_DETACH)
        self._settle = self.redis.register_script(_SETTLE)
        self._announce = self.redis.register_script(_ANNOUNCE)
        self._reap = self.redis.register_script(_REAP)
        self._sweep = self.redis.register_script(_SWEEP)
        self._forget = self.redis.register_script(_FORGET)
        self._epoch_candidate = secrets.token_hex(8)
        self._grace_ms = str(round(grace * 1000))

    def _user_keys(self, node: str, username: str) -> list[str]:
        return [f"{self.p}:state", f"{self.p}:un:{username}", f"{self.p}:nu:{node}",
                f"{self.p}:pending", f"{self.p}:closed"]

    async def attach(self, node: str, username: str, now: str) -> str | None:
        keys = self._user_keys(node, username)
        return await self._attach(keys=keys, args=[username, node, self.channel, now]) or None

    async def detach(self, node: str, username: str, now: str) -> str | None:
        keys = self._user_keys(node, username)
        event = await self._detach(
            keys=keys, args=[username, node, self.channel, now, self._grace_ms]) or None
        if event is None and self.grace > 0:
            self.pending_added.set()  # maybe a new deadline: let the sweeper look in time
        return event

    async def settle(self, username: str, last_seen: str) -> str | None:
        keys = [f"{self.p}:state", f"{self.p}:un:{username}", f"{self.p}:pending",
                f"{self.p}:closed"]
        return await self._settle(keys=keys, args=[username, self.channel, last_seen]) or None

    async def announce(self, username: str) -> str | None:
        return await self._announce(keys=[f"{self.p}:state"],
                                    args=[username, self.channel]) or None

    async def forget(self, username: str) -> None:
        keys = [f"{self.p}:state", f"{self.p}:un:{username}", f"{self.p}:pending",
                f"{self.p}:closed"]
        await self._forget(keys=keys, args=[username])

    async def states(self) -> dict[str, UserState]:
        # The client decodes responses (decode_responses=True): keys and values are str.
        raw: dict[str, str] = await self.redis.hgetall(  # type: ignore[assignment]
            f"{self.p}:state")
        out = {}
        for user, value in raw.items():
            online, version, seen = value.split("|", 2)
            out[user] = UserState(online == "1", int(version), seen or None)
        return out

    async def members(self, node: str) -> set[str]:
        return {str(user) for user in await self.redis.smembers(f"{self.p}:nu:{node}")}

    async def heartbeat(self, node: str, timeout: float) -> tuple[str, bool]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.p}:alive:{node}", "1", px=int(timeout * 1000))
            pipe.sadd(f"{self.p}:nodes", node)
            pipe.set(f"{self.p}:epoch", self._epoch_candidate, nx=True)
            pipe.get(f"{self.p}:epoch")
            result = await pipe.execute()
        return str(result[-1]), result[1] == 1

    async def reap(self, node: str, now: str, force: bool = False) -> list[str]:
        return await self._run_reap(node, now, force, "0")

    async def handover(self, node: str, now: str) -> list[str]:
        events = await self._run_reap(node, now, True, self._grace_ms)
        if self.grace > 0:
            self.pending_added.set()
        return events

    async def _run_reap(self, node: str, now: str, force: bool, grace_ms: str) -> list[str]:
        keys = [f"{self.p}:state", f"{self.p}:nu:{node}", f"{self.p}:alive:{node}",
                f"{self.p}:nodes", f"{self.p}:pending", f"{self.p}:closed"]
        args = [node, self.channel, now, self.p, "1" if force else "0", grace_ms]
        return list(await self._reap(keys=keys, args=args))

    async def sweep(self) -> tuple[list[str], float | None]:
        keys = [f"{self.p}:state", f"{self.p}:pending", f"{self.p}:closed"]
        wait_ms, events = await self._sweep(keys=keys, args=[self.channel, self.p, SWEEP_BATCH])
        return list(events), None if int(wait_ms) < 0 else int(wait_ms) / 1000

    async def dead_nodes(self, me: str) -> list[str]:
        nodes = sorted(str(n) for n in await self.redis.smembers(f"{self.p}:nodes")
                       if str(n) != me)
        if not nodes:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in nodes:
                pipe.exists(f"{self.p}:alive:{n}")
            flags = await pipe.execute()
        return [n for n, flag in zip(nodes, flags, strict=True) if not flag]
