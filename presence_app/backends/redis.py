"""``redis://``, ``rediss://``, ``unix://`` and ``redis+sentinel://``: every process shares the
messages (pub/sub) and the presence state (Lua scripts in ``lua/``, each transition and its
event one atomic step). redis is imported lazily: without Redis configured it is never loaded.

Keys (all under the configured prefix ``p``):
  ``p:events``       the pub/sub channel
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
from typing import Any

from presence_app.backends.base import UserState
from presence_app.backends.redis_pubsub import RedisPubSub
from presence_app.backends.scripts import lua
from presence_app.backends.throttle import Throttle

SWEEP_BATCH = 1000  # users finalised per script call: keeps each atomic step short
_SCRIPTS = ("attach", "detach", "settle", "announce", "reap", "sweep")


class RedisBackend(RedisPubSub):
    """The shared backend. ``timeout`` bounds every command and the silence of the
    subscription (see ``RedisPubSub``)."""

    def __init__(self, url: str, prefix: str, grace: float = 0.0, timeout: float = 5.0) -> None:
        super().__init__(url, f"{prefix}:events", grace, timeout)
        self.p = prefix
        self._script = {
            name: self._client.register_script(lua("presence", name)) for name in _SCRIPTS
        }
        self._script["forget"] = self._client.register_script(lua("forget"))
        self._epoch_candidate = secrets.token_hex(8)
        self._grace_ms = str(round(grace * 1000))

    @classmethod
    def from_url(cls, url: str, prefix: str, grace: float, timeout: float) -> RedisBackend:
        return cls(url, prefix, grace, timeout)

    def login_throttle(
        self, max_failures: int, window: float, max_entries: int = 100_000
    ) -> Throttle:
        """Counted in Redis: the limit holds for the deployment, not per process."""
        from presence_app.backends.redis_throttle import RedisLoginThrottle

        return RedisLoginThrottle(self._client, self.p, max_failures, window, max_entries)

    def _user_keys(self, node: str, username: str) -> list[str]:
        return [
            f"{self.p}:state",
            f"{self.p}:un:{username}",
            f"{self.p}:nu:{node}",
            f"{self.p}:pending",
            f"{self.p}:closed",
        ]

    def _unheld_keys(self, username: str) -> list[str]:
        return [
            f"{self.p}:state",
            f"{self.p}:un:{username}",
            f"{self.p}:pending",
            f"{self.p}:closed",
        ]

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._script[name](keys=keys, args=args)

    async def attach(self, node: str, username: str, now: str) -> str | None:
        keys = self._user_keys(node, username)
        return await self._run("attach", keys, [username, node, self.channel, now]) or None

    async def detach(self, node: str, username: str, now: str) -> str | None:
        keys = self._user_keys(node, username)
        event = (
            await self._run("detach", keys, [username, node, self.channel, now, self._grace_ms])
            or None
        )
        if event is None and self.grace > 0:
            self.pending_added.set()  # maybe a new deadline: let the sweeper look in time
        return event

    async def settle(self, username: str, last_seen: str) -> str | None:
        return (
            await self._run(
                "settle", self._unheld_keys(username), [username, self.channel, last_seen]
            )
            or None
        )

    async def announce(self, username: str) -> str | None:
        return await self._run("announce", [f"{self.p}:state"], [username, self.channel]) or None

    async def forget(self, username: str) -> None:
        await self._run("forget", self._unheld_keys(username), [username])

    async def states(self) -> dict[str, UserState]:
        # The client decodes responses (decode_responses=True): keys and values are str.
        raw: dict[str, str] = await self._client.hgetall(f"{self.p}:state")
        out = {}
        for user, value in raw.items():
            online, version, seen = value.split("|", 2)
            out[user] = UserState(online == "1", int(version), seen or None)
        return out

    async def members(self, node: str) -> set[str]:
        return {str(user) for user in await self._client.smembers(f"{self.p}:nu:{node}")}

    async def heartbeat(self, node: str, timeout: float) -> tuple[str, bool]:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.p}:alive:{node}", "1", px=int(timeout * 1000))
            pipe.sadd(f"{self.p}:nodes", node)
            pipe.set(f"{self.p}:epoch", self._epoch_candidate, nx=True)
            pipe.get(f"{self.p}:epoch")
            result = await pipe.execute()
        return str(result[-1]), result[1] == 1

    async def reap(self, node: str, now: str, force: bool = False) -> list[str]:
        return await self._reap(node, now, force, "0")

    async def handover(self, node: str, now: str) -> list[str]:
        events = await self._reap(node, now, True, self._grace_ms)
        if self.grace > 0:
            self.pending_added.set()
        return events

    async def _reap(self, node: str, now: str, force: bool, grace_ms: str) -> list[str]:
        keys = [
            f"{self.p}:state",
            f"{self.p}:nu:{node}",
            f"{self.p}:alive:{node}",
            f"{self.p}:nodes",
            f"{self.p}:pending",
            f"{self.p}:closed",
        ]
        args = [node, self.channel, now, self.p, "1" if force else "0", grace_ms]
        return list(await self._run("reap", keys, args))

    async def sweep(self) -> tuple[list[str], float | None]:
        keys = [f"{self.p}:state", f"{self.p}:pending", f"{self.p}:closed"]
        wait_ms, events = await self._run("sweep", keys, [self.channel, self.p, SWEEP_BATCH])
        return list(events), None if int(wait_ms) < 0 else int(wait_ms) / 1000

    async def dead_nodes(self, me: str) -> list[str]:
        nodes = sorted(
            str(n) for n in await self._client.smembers(f"{self.p}:nodes") if str(n) != me
        )
        if not nodes:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for n in nodes:
                pipe.exists(f"{self.p}:alive:{n}")
            flags = await pipe.execute()
        return [n for n, flag in zip(nodes, flags, strict=True) if not flag]
