"""The shared truth about who is online, in memory (one process) or in Redis (many).

Per user the store keeps the set of nodes (processes) with at least one open socket of the
user, and a state ``(online, version, last_seen)``. Invariant: online exactly while that set
is non-empty. Every transition bumps the version and publishes one ``presence`` event through
the broker, atomically with the state change (a Lua script in Redis), so concurrent changes
on different processes give exactly one event per real transition, in version order.

Versions are microsecond timestamps forced to grow (``max(old + 1, now)``): they stay
monotonic even after Redis restarts empty and every counter is lost.
"""
from __future__ import annotations

import json
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from presence_app.broker import LocalBroker


@dataclass(frozen=True)
class UserState:
    online: bool
    version: int
    last_seen: str | None


def presence_event(username: str, state: UserState) -> str:
    return json.dumps({"type": "presence", "username": username, "online": state.online,
                       "last_seen": state.last_seen, "version": state.version},
                      separators=(",", ":"))


class PresenceStore(ABC):
    """Node membership per user; methods return the published event text, or None."""

    @abstractmethod
    async def attach(self, node: str, username: str, now: str) -> str | None:
        """``node`` got its first socket of ``username``."""

    @abstractmethod
    async def detach(self, node: str, username: str, now: str) -> str | None:
        """``node`` closed its last socket of ``username``."""

    @abstractmethod
    async def settle(self, username: str, last_seen: str) -> str | None:
        """Make sure a user no node holds is offline (resync after an outage)."""

    @abstractmethod
    async def announce(self, username: str) -> str | None:
        """A new account: publish it once as offline, never seen."""

    @abstractmethod
    async def states(self) -> dict[str, UserState]:
        ...

    @abstractmethod
    async def members(self, node: str) -> set[str]:
        """The users the store believes ``node`` holds."""

    @abstractmethod
    async def heartbeat(self, node: str, timeout: float) -> tuple[str, bool]:
        """Mark ``node`` alive for ``timeout`` seconds.

        Returns the store's epoch (a new one: the store was emptied) and whether ``node`` had
        to be added back to the known nodes (it was reaped, or the store is new)."""

    @abstractmethod
    async def reap(self, node: str, now: str, force: bool = False) -> list[str]:
        """Detach every user of ``node`` if it is dead (or ``force``); the events published."""

    @abstractmethod
    async def dead_nodes(self, me: str) -> list[str]:
        ...


def next_version(old: int | None) -> int:
    now = time.time_ns() // 1000
    return now if old is None or old < now else old + 1


class MemoryStore(PresenceStore):
    """One process: plain dicts, events through the in-process broker."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        self._nodes: dict[str, set[str]] = {}
        self._states: dict[str, UserState] = {}
        self.epoch = secrets.token_hex(8)

    def _set(self, username: str, online: bool, last_seen: str | None) -> str:
        old = self._states.get(username)
        state = UserState(online, next_version(old.version if old else None), last_seen)
        self._states[username] = state
        event = presence_event(username, state)
        self.broker.publish_nowait(event)
        return event

    async def attach(self, node: str, username: str, now: str) -> str | None:
        self._nodes.setdefault(username, set()).add(node)
        state = self._states.get(username)
        return None if state and state.online else self._set(username, True, now)

    async def detach(self, node: str, username: str, now: str) -> str | None:
        nodes = self._nodes.get(username, set())
        nodes.discard(node)
        if nodes:
            return None
        self._nodes.pop(username, None)
        return await self.settle(username, now)

    async def settle(self, username: str, last_seen: str) -> str | None:
        if self._nodes.get(username):
            return None
        state = self._states.get(username)
        if state and not state.online:
            return None
        return self._set(username, False, last_seen)

    async def announce(self, username: str) -> str | None:
        return None if username in self._states else self._set(username, False, None)

    async def states(self) -> dict[str, UserState]:
        return dict(self._states)

    async def members(self, node: str) -> set[str]:
        return {user for user, nodes in self._nodes.items() if node in nodes}

    async def heartbeat(self, node: str, timeout: float) -> tuple[str, bool]:
        return self.epoch, False

    async def reap(self, node: str, now: str, force: bool = False) -> list[str]:
        if not force:
            return []
        events = [await self.detach(node, user, now) for user in await self.members(node)]
        return [e for e in events if e]

    async def dead_nodes(self, me: str) -> list[str]:
        return []
