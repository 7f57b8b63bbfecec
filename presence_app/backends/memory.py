"""``memory://``: one process, zero configuration. Plain dicts and one queue per listener.

A transition changes the state and hands its event to every listener's queue in the same
synchronous step, so nothing can come between them (the Redis backend's Lua scripts give the
same guarantee across processes).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import secrets
import time

from presence_app.backends.base import (
    Backend,
    MessageHandler,
    Pending,
    ReconnectHandler,
    UserState,
    next_version,
    presence_event,
)

log = logging.getLogger(__name__)


class MemoryBackend(Backend):
    """In-process messages and presence state."""

    name = "memory"
    survives_restart = False

    def __init__(self, grace: float = 0.0) -> None:
        super().__init__(grace)
        self._listeners: list[asyncio.Queue[str]] = []
        self._nodes: dict[str, set[str]] = {}
        self._states: dict[str, UserState] = {}
        self._pending: dict[str, Pending] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap; stale entries skipped on pop
        self.epoch = secrets.token_hex(8)

    @classmethod
    def from_url(cls, url: str, prefix: str, grace: float, timeout: float) -> MemoryBackend:
        return cls(grace)  # one process: no key prefix, nothing to time out

    # -- messages ---------------------------------------------------------------------------
    async def publish(self, message: str) -> None:
        self._deliver(message)

    def _deliver(self, message: str) -> None:
        for queue in self._listeners:
            queue.put_nowait(message)

    async def listen(self, on_message: MessageHandler, on_resubscribed: ReconnectHandler) -> None:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.append(queue)
        self._subscribed_event().set()
        try:
            while True:
                message = await queue.get()
                try:
                    on_message(message)
                except Exception:
                    log.exception("Message handler failed; message dropped")
        finally:
            self._listeners.remove(queue)

    # -- presence transitions ---------------------------------------------------------------
    def _set(self, username: str, online: bool, last_seen: str | None) -> str:
        old = self._states.get(username)
        state = UserState(online, next_version(old.version if old else None), last_seen)
        self._states[username] = state
        event = presence_event(username, state)
        self._deliver(event)
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
                True, next_version(old.version if old else None), entry.last_seen
            )
            self._hold(entry)
