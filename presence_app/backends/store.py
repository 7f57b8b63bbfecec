"""The shared truth about who is online, in memory (one process) or in Redis (many).

Per user the store keeps the set of nodes (processes) with at least one open socket of the
user, and a state ``(online, version, last_seen)``. Invariant: online exactly while that set
is non-empty. Every transition bumps the version and publishes one ``presence`` event through
the broker, atomically with the state change (a Lua script in Redis), so concurrent changes
on different processes give exactly one event per real transition, in version order.

Versions are microsecond timestamps forced to grow (``max(old + 1, now)``): they stay
monotonic even after Redis restarts empty and every counter is lost.

Offline grace (opt-in, ``grace > 0``): when the last node lets a user go, the store records a
pending deadline (``now + grace``) and the close time instead of publishing "offline"; an
attach anywhere cancels it; ``sweep`` (run by every live process) publishes the expired ones,
atomically, so exactly one process announces each user, with the close time as ``last_seen``.
The deadlines live in the store, not in the process that recorded them: a process killed
during a grace leaves nobody online for longer than the grace.
"""
from __future__ import annotations

import asyncio
import heapq
import json
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from presence_app.backends.broker import LocalBroker


@dataclass(frozen=True)
class UserState:
    online: bool
    version: int
    last_seen: str | None


def presence_event(username: str, state: UserState) -> str:
    return json.dumps({"type": "presence", "username": username, "online": state.online,
                       "last_seen": state.last_seen, "version": state.version},
                      separators=(",", ":"))


@dataclass(frozen=True)
class Pending:
    """A user no node holds, still listed online until ``deadline`` (seconds since the epoch)."""
    username: str
    deadline: float
    last_seen: str


class PresenceStore(ABC):
    """Node membership per user; methods return the published event text, or None."""

    #: False when the store's content dies with this process (the in-process store): pending
    #: deadlines must then be saved elsewhere to survive a restart.
    survives_restart = True

    def __init__(self, grace: float = 0.0) -> None:
        self.grace = grace
        # Set whenever a pending deadline is recorded here, so that a sweeper can wake in time.
        self.pending_added = asyncio.Event()

    @abstractmethod
    async def attach(self, node: str, username: str, now: str) -> str | None:
        """``node`` got its first socket of ``username``."""

    @abstractmethod
    async def detach(self, node: str, username: str, now: str) -> str | None:
        """``node`` closed its last socket of ``username``; with a grace, if no node holds the
        user any more, a pending deadline is recorded instead of an offline event."""

    @abstractmethod
    async def settle(self, username: str, last_seen: str) -> str | None:
        """Make sure a user no node holds is offline (resync after an outage)."""

    @abstractmethod
    async def announce(self, username: str) -> str | None:
        """A new account: publish it once as offline, never seen."""

    @abstractmethod
    async def forget(self, username: str) -> None:
        """A deleted account: drop its state and pending deadline, unless a node still holds
        it (that node forgets it after detaching)."""

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

    @abstractmethod
    async def handover(self, node: str, now: str) -> list[str]:
        """A stopping (or restarted) ``node`` lets its users go: with a grace each user no other
        node holds gets a pending deadline; without one, the same as ``reap(force=True)``."""

    @abstractmethod
    async def sweep(self) -> tuple[list[str], float | None]:
        """Publish "offline" for every expired pending user no node holds again.

        Returns the events published here and the seconds until the next pending deadline
        (None: nothing pending; 0 or less: more are due already)."""

    async def pending(self) -> list[Pending]:
        """Every pending deadline, to be saved when the store does not survive a restart."""
        return []

    async def restore(self, entries: list[Pending]) -> None:
        """Take back deadlines saved by an earlier life: those users are online until then."""


def next_version(old: int | None) -> int:
    now = time.time_ns() // 1000
    return now if old is None or old < now else old + 1


class MemoryStore(PresenceStore):
    """One process: plain dicts, events through the in-process broker."""

    survives_restart = False

    def __init__(self, broker: LocalBroker, grace: float = 0.0) -> None:
        super().__init__(grace)
        self.broker = broker
        self._nodes: dict[str, set[str]] = {}
        self._states: dict[str, UserState] = {}
        self._pending: dict[str, Pending] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap; stale entries skipped on pop
        self.epoch = secrets.token_hex(8)

    def _set(self, username: str, online: bool, last_seen: str | None) -> str:
        old = self._states.get(username)
        state = UserState(online, next_version(old.version if old else None), last_seen)
        self._states[username] = state
        event = presence_event(username, state)
        self.broker.publish_nowait(event)
        return event

    def _hold(self, entry: Pending) -> None:
        self._pending[entry.username] = entry
        heapq.heappush(self._deadlines, (entry.deadline, entry.username))
        self.pending_added.set()

    async def attach(self, node: str, username: str, now: str) -> str | None:
        self._nodes.setdefault(username, set()).add(node)
        self._pending.pop(username, None)
        state = self._states.get(username)
        return None if state and state.online else self._set(username, True, now)

    def _release(self, node: str, username: str) -> bool:
        """Take ``node`` out of the user's holders; True if no node holds the user now."""
        nodes = self._nodes.get(username)
        if nodes is not None:
            nodes.discard(node)
            if nodes:
                return False
            del self._nodes[username]
        return True

    async def detach(self, node: str, username: str, now: str) -> str | None:
        if not self._release(node, username):
            return None
        state = self._states.get(username)
        if self.grace > 0 and state is not None and state.online:
            if username not in self._pending:  # a repeated detach keeps the first close time
                self._hold(Pending(username, time.time() + self.grace, now))
            return None
        return await self.settle(username, now)

    async def settle(self, username: str, last_seen: str) -> str | None:
        if self._nodes.get(username):
            return None
        self._pending.pop(username, None)
        state = self._states.get(username)
        if state and not state.online:
            return None
        return self._set(username, False, last_seen)

    async def announce(self, username: str) -> str | None:
        return None if username in self._states else self._set(username, False, None)

    async def forget(self, username: str) -> None:
        if not self._nodes.get(username):
            self._states.pop(username, None)
            self._pending.pop(username, None)

    async def states(self) -> dict[str, UserState]:
        return dict(self._states)

    async def members(self, node: str) -> set[str]:
        return {user for user, nodes in self._nodes.items() if node in nodes}

    async def heartbeat(self, node: str, timeout: float) -> tuple[str, bool]:
        return self.epoch, False

    async def reap(self, node: str, now: str, force: bool = False) -> list[str]:
        if not force:
            return []
        events = []
        for user in await self.members(node):
            event = await self.settle(user, now) if self._release(node, user) else None
            if event:
                events.append(event)
        return events

    async def dead_nodes(self, me: str) -> list[str]:
        return []

    async def handover(self, node: str, now: str) -> list[str]:
        if self.grace <= 0:
            return await self.reap(node, now, force=True)
        for user in await self.members(node):
            await self.detach(node, user, now)
        return []

    async def sweep(self) -> tuple[list[str], float | None]:
        now, events = time.time(), []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, user = heapq.heappop(self._deadlines)
            entry = self._pending.get(user)
            if entry is None or entry.deadline != deadline:
                continue  # cancelled by an attach (or superseded)
            event = await self.settle(user, entry.last_seen)
            if event:
                events.append(event)
        while self._deadlines:
            deadline, user = self._deadlines[0]
            entry = self._pending.get(user)
            if entry is not None and entry.deadline == deadline:
                return events, deadline - now
            heapq.heappop(self._deadlines)
        return events, None

    async def pending(self) -> list[Pending]:
        return list(self._pending.values())

    async def restore(self, entries: list[Pending]) -> None:
        """Listed online again, without an event: no client is connected yet at start."""
        now = time.time()
        for entry in entries:
            if entry.deadline <= now or self._nodes.get(entry.username):
                continue
            old = self._states.get(entry.username)
            self._states[entry.username] = UserState(
                True, next_version(old.version if old else None), entry.last_seen)
            self._hold(entry)
