"""The presence store in Redis: Lua scripts make every transition atomic across processes.

Keys (all under the configured prefix ``p``):
  ``p:state``        hash user -> "online|version|last_seen"
  ``p:un:<user>``    set of nodes holding the user
  ``p:nu:<node>``    set of users a node holds
  ``p:nodes``        set of known nodes
  ``p:alive:<node>`` liveness key with a TTL of the heartbeat timeout
  ``p:epoch``        random token set once; a different or missing one means Redis was emptied
"""
from __future__ import annotations

import secrets

from presence_app.broker import RedisBroker
from presence_app.store import PresenceStore, UserState

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
"""

# KEYS: state, un:user, nu:node   ARGV: user, node, channel, now
# The node is not added to p:nodes here: only heartbeats do that, so a heartbeat that has to
# add it back learns that this node was reaped (and resynchronises).
_ATTACH = _LIB + r"""
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
local st = get_state(KEYS[1], ARGV[1])
if st and st[1] then return false end
return set_state(KEYS[1], ARGV[3], ARGV[1], true, ARGV[4], st)
"""

# KEYS: state, un:user, nu:node   ARGV: user, node, channel, now
_DETACH = _LIB + r"""
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('SCARD', KEYS[2]) > 0 then return false end
local st = get_state(KEYS[1], ARGV[1])
if st and not st[1] then return false end
return set_state(KEYS[1], ARGV[3], ARGV[1], false, ARGV[4], st)
"""

# KEYS: state, un:user   ARGV: user, channel, last_seen
_SETTLE = _LIB + r"""
if redis.call('SCARD', KEYS[2]) > 0 then return false end
local st = get_state(KEYS[1], ARGV[1])
if st and not st[1] then return false end
return set_state(KEYS[1], ARGV[2], ARGV[1], false, ARGV[3], st)
"""

# KEYS: state   ARGV: user, channel
_ANNOUNCE = _LIB + r"""
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return false end
return set_state(KEYS[1], ARGV[2], ARGV[1], false, '', nil)
"""

# KEYS: state, nu:node, alive:node, nodes   ARGV: node, channel, now, prefix, force
_REAP = _LIB + r"""
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {} end
local out = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local un = ARGV[4] .. ':un:' .. user
  redis.call('SREM', un, ARGV[1])
  if redis.call('SCARD', un) == 0 then
    local st = get_state(KEYS[1], user)
    if not st or st[1] then
      table.insert(out, set_state(KEYS[1], ARGV[2], user, false, ARGV[3], st))
    end
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[1])
return out
"""


class RedisStore(PresenceStore):
    def __init__(self, broker: RedisBroker, prefix: str) -> None:
        self.redis = broker.client
        self.channel = broker.channel
        self.p = prefix
        self._attach = self.redis.register_script(_ATTACH)
        self._detach = self.redis.register_script(_DETACH)
        self._settle = self.redis.register_script(_SETTLE)
        self._announce = self.redis.register_script(_ANNOUNCE)
        self._reap = self.redis.register_script(_REAP)
        self._epoch_candidate = secrets.token_hex(8)

    async def attach(self, node: str, username: str, now: str) -> str | None:
        keys = [f"{self.p}:state", f"{self.p}:un:{username}", f"{self.p}:nu:{node}"]
        return await self._attach(keys=keys, args=[username, node, self.channel, now]) or None

    async def detach(self, node: str, username: str, now: str) -> str | None:
        keys = [f"{self.p}:state", f"{self.p}:un:{username}", f"{self.p}:nu:{node}"]
        return await self._detach(keys=keys, args=[username, node, self.channel, now]) or None

    async def settle(self, username: str, last_seen: str) -> str | None:
        keys = [f"{self.p}:state", f"{self.p}:un:{username}"]
        return await self._settle(keys=keys, args=[username, self.channel, last_seen]) or None

    async def announce(self, username: str) -> str | None:
        return await self._announce(keys=[f"{self.p}:state"],
                                    args=[username, self.channel]) or None

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
        keys = [f"{self.p}:state", f"{self.p}:nu:{node}", f"{self.p}:alive:{node}",
                f"{self.p}:nodes"]
        args = [node, self.channel, now, self.p, "1" if force else "0"]
        return list(await self._reap(keys=keys, args=args))

    async def dead_nodes(self, me: str) -> list[str]:
        nodes = sorted(str(n) for n in await self.redis.smembers(f"{self.p}:nodes")
                       if str(n) != me)
        if not nodes:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for n in nodes:
                pipe.exists(f"{self.p}:alive:{n}")
            flags = await pipe.execute()
        return [n for n, flag in zip(nodes, flags) if not flag]
