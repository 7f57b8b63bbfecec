"""Failed-login throttling: after too many failures for one name from one address, wait.

This is the in-memory version, for one process (the Redis backend's ``login_throttle`` is
``redis_throttle.RedisLoginThrottle``, which shares the counters across processes). Successful
logins never count and are never refused while the pair is not locked (load tests log in
thousands of times from one address). A locked pair is refused even with the right password:
otherwise a different answer would tell the attacker which guess was right.

Memory is bounded by ``max_entries`` (name, address) pairs. When a new pair needs room, the
pair whose last failure is oldest goes, and pairs that are still counting go before locked
ones: a spray of distinct names (cheap: an over-long password skips bcrypt) can only push
out other sprayed names, never reopen a locked name. Only when every remembered pair is
locked does the oldest lock go; replacing a lock then costs ``max_failures`` failures.

Guesses sent at once would all pass a check made before any of them has failed, so a login
``reserve``s a turn first: no more checks of one name from one address run at the same time
than failures are still allowed; the others wait their turn (successful logins too: they
wait, they are never refused).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Protocol

Key = tuple[str, str]


class Throttle(Protocol):
    """What the login handler uses: in memory (one process) or in Redis (a deployment)."""

    async def reserve(self, username: str, address: str) -> float: ...

    async def release(self, username: str, address: str, ok: bool | None) -> None: ...


class LoginThrottle:
    def __init__(self, max_failures: int, window: float, max_entries: int = 100_000) -> None:
        self.max_failures = max_failures  # 0: off
        self.window = window
        self.max_entries = max(max_entries, 1)
        # Least recently failed first. A pair lives in exactly one of the two.
        self._counting: OrderedDict[Key, deque[float]] = OrderedDict()
        self._locked: OrderedDict[Key, deque[float]] = OrderedDict()
        # Checks running and waiting, per pair: as many entries as requests in flight.
        self._checking: dict[Key, int] = {}
        self._waiters: dict[Key, deque[asyncio.Future[None]]] = {}

    def __len__(self) -> int:
        return len(self._counting) + len(self._locked)

    def retry_after(self, username: str, address: str) -> float:
        """Seconds to wait before this name may try again from this address (0: go ahead)."""
        if not self.max_failures:
            return 0.0
        key = (username.lower(), address)
        failures = self._locked.get(key)
        if failures is None:
            return 0.0
        wait = failures[0] + self.window - time.monotonic()
        if wait <= 0:  # the window has passed: back to counting (or forgotten)
            self._unlock(key)
            return 0.0
        return wait

    def failed(self, username: str, address: str) -> None:
        if not self.max_failures:
            return
        key = (username.lower(), address)
        now = time.monotonic()
        failures = self._locked.pop(key, None) or self._counting.pop(key, None)
        if failures is None:
            self._make_room()
            failures = deque()
        horizon = now - self.window
        while failures and failures[0] < horizon:
            failures.popleft()
        failures.append(now)
        while len(failures) > self.max_failures:
            failures.popleft()
        table = self._locked if len(failures) >= self.max_failures else self._counting
        table[key] = failures  # at the end: the most recently failed

    async def reserve(self, username: str, address: str) -> float:
        """Wait for a turn to check a password. Returns 0 with a turn taken (give it back
        with ``release``), or the seconds to wait when the pair is locked (no turn taken)."""
        if not self.max_failures:
            return 0.0
        key = (username.lower(), address)
        while True:
            wait = self.retry_after(username, address)
            if wait > 0:
                return wait
            if self._checking.get(key, 0) < self._allowed(key):
                self._checking[key] = self._checking.get(key, 0) + 1
                return 0.0
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(key, deque())
            waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters and self._waiters.get(key) is waiters:
                    del self._waiters[key]

    async def release(self, username: str, address: str, ok: bool | None) -> None:
        """Give a turn back: ``ok`` True for a success, False for a failure, None for a check
        that did not happen (an error): it counts neither way."""
        if not self.max_failures:
            return
        if ok is True:
            self.succeeded(username, address)
        elif ok is False:
            self.failed(username, address)
        key = (username.lower(), address)
        running = self._checking.pop(key, 0) - 1
        if running > 0:
            self._checking[key] = running
        waiters = self._waiters.get(key)
        if waiters:  # as many as may now run; all of them if locked (they get their 429)
            turns = (
                len(waiters)
                if self.retry_after(username, address) > 0
                else self._allowed(key) - max(running, 0)
            )
            for waiter in list(waiters)[: max(turns, 0)]:
                if not waiter.done():
                    waiter.set_result(None)

    def _allowed(self, key: Key) -> int:
        """Failures this pair may still have within the window."""
        failures = self._counting.get(key)
        if not failures:
            return self.max_failures
        horizon = time.monotonic() - self.window
        return self.max_failures - sum(1 for t in failures if t >= horizon)

    def succeeded(self, username: str, address: str) -> None:
        key = (username.lower(), address)
        self._counting.pop(key, None)
        self._locked.pop(key, None)

    def _unlock(self, key: Key) -> None:
        failures = self._locked.pop(key)
        horizon = time.monotonic() - self.window
        while failures and failures[0] < horizon:
            failures.popleft()
        if failures:
            self._counting[key] = failures
            self._counting.move_to_end(key, last=False)  # old news: first to go

    def _make_room(self) -> None:
        while len(self) >= self.max_entries:
            if self._counting:
                self._counting.popitem(last=False)
                continue
            key = next(iter(self._locked))
            if self._locked[key][0] + self.window > time.monotonic():
                # Only locks are left: the one that has been quiet longest goes.
                self._locked.popitem(last=False)
            else:
                self._unlock(key)
