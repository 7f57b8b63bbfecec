"""The one interface every backend offers: publish, listen, and the presence transitions.

A backend is chosen by the URL scheme (``presence_app.backends.make_backend``) and is both the
message bus and the shared truth about who is online, because the two must change together:
every presence transition publishes its event atomically with the state change (in Redis, in
the same Lua script), so concurrent changes on different processes give exactly one event per
real transition, in version order.

Messages: what is published comes back through ``listen`` to every listener, the publisher
included: there is one delivery path, and fan-out happens in one place (presence).

Presence: per user the backend keeps the set of nodes (processes) with at least one open
socket of the user, and a state ``(online, version, last_seen)``. Invariant: online exactly
while that set is non-empty. Versions are microsecond timestamps forced to grow
(``max(old + 1, now)``): they stay monotonic even after Redis restarts empty.

Offline grace (opt-in, ``grace > 0``): when the last node lets a user go, the backend records
a pending deadline (``now + grace``) and the close time instead of publishing "offline"; an
attach anywhere cancels it; ``sweep`` (run by every live process) publishes the expired ones,
atomically, so exactly one process announces each user, with the close time as ``last_seen``.
The deadlines live in the backend, not in the process that recorded them: a process killed
during a grace leaves nobody online for longer than the grace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from presence_app.backends.throttle import LoginThrottle, Throttle

log = logging.getLogger(__name__)

MessageHandler = Callable[[str], None]
ReconnectHandler = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class UserState:
    online: bool
    version: int
    last_seen: str | None


def presence_event(username: str, state: UserState) -> str:
    return json.dumps(
        {
            "type": "presence",
            "username": username,
            "online": state.online,
            "last_seen": state.last_seen,
            "version": state.version,
        },
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class Pending:
    """A user no node holds, still listed online until ``deadline`` (seconds since the epoch)."""

    username: str
    deadline: float
    last_seen: str


def next_version(old: int | None) -> int:
    now = time.time_ns() // 1000
    return now if old is None or old < now else old + 1


class Backend(ABC):
    """Messages to every process, and node membership per user.

    The transitions return the event text they published, or None when nothing changed.
    """

    #: Shown by /healthz as ``broker`` and in the start-up log line.
    name = "backend"
    #: Why the backend is unusable right now, or None when it is fine.
    problem: str | None = None
    #: Subscriptions re-established after a loss (read by /metrics).
    reconnects = 0
    #: False when the state dies with this process (in memory): pending deadlines must then
    #: be saved elsewhere to survive a restart.
    survives_restart = True

    def __init__(self, grace: float = 0.0) -> None:
        self.grace = grace
        # Set whenever a pending deadline is recorded here, so that a sweeper can wake in time.
        self.pending_added = asyncio.Event()
        self._subscribed: asyncio.Event | None = None

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, prefix: str, grace: float, timeout: float) -> Backend:
        """Made by ``make_backend``: each backend takes what it needs of the options."""

    # -- lifecycle --------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open connections; an unreachable server is reported in ``problem``, not raised."""

    async def close(self) -> None:
        """Release connections (cancel the ``listen`` tasks first)."""

    def login_throttle(
        self, max_failures: int, window: float, max_entries: int = 100_000
    ) -> Throttle:
        """Failed logins counted where this backend keeps its state: in this process by
        default; a shared backend counts them for the whole deployment."""
        return LoginThrottle(max_failures, window, max_entries)

    # -- messages ---------------------------------------------------------------------------
    @abstractmethod
    async def publish(self, message: str) -> None: ...

    @abstractmethod
    async def listen(self, on_message: MessageHandler, on_resubscribed: ReconnectHandler) -> None:
        """Deliver every message published from now on to ``on_message``, in order, until
        cancelled. Each call is a listener of its own.

        ``on_resubscribed`` is awaited after every successful (re)subscription except the
        first: whatever was published meanwhile may have been missed, so state must be
        resynchronised.
        """

    def retry_now(self) -> None:
        """The server answers again (a heartbeat got through): resubscribe without waiting
        for the backoff, so that presence and /healthz are back within a round trip."""

    def _subscribed_event(self) -> asyncio.Event:
        if self._subscribed is None:
            self._subscribed = asyncio.Event()
        return self._subscribed

    async def wait_subscribed(self, timeout: float) -> None:
        """Wait until ``listen`` is subscribed (or give up after ``timeout``)."""
        try:
            await asyncio.wait_for(self._subscribed_event().wait(), timeout)
        except TimeoutError:
            log.warning("Not subscribed to the broker after %.0f s; continuing", timeout)

    # -- presence transitions ---------------------------------------------------------------
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
    async def states(self) -> dict[str, UserState]: ...

    @abstractmethod
    async def members(self, node: str) -> set[str]:
        """The users the backend believes ``node`` holds."""

    @abstractmethod
    async def heartbeat(self, node: str, timeout: float) -> tuple[str, bool]:
        """Mark ``node`` alive for ``timeout`` seconds.

        Returns the backend's epoch (a new one: the state was emptied) and whether ``node``
        had to be added back to the known nodes (it was reaped, or the state is new)."""

    @abstractmethod
    async def reap(self, node: str, now: str, force: bool = False) -> list[str]:
        """Detach every user of ``node`` if it is dead (or ``force``); the events published."""

    @abstractmethod
    async def dead_nodes(self, me: str) -> list[str]: ...

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
        """Every pending deadline, to be saved when the state does not survive a restart."""
        return []

    async def restore(self, entries: list[Pending]) -> None:
        """Take back deadlines saved by an earlier life: those users are online until then."""
