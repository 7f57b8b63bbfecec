"""Failed-login throttling shared by every process through Redis.

The in-memory ``LoginThrottle`` counts per process: N processes would allow N times the
limit. Here the failures of one (lowercased name, address) pair live in Redis, so the limit
holds for the deployment. Keys (under the app's ``--redis-prefix`` ``p``):

  ``p:login-failures:<address>|<name>``  sorted set: one member per failure, scored by the
                                          Redis clock (ms); expires with the window
  ``p:login-turns:<address>|<name>``     sorted set: checks running now, scored by when
                                          their turn lapses (a process killed mid-check
                                          cannot hold a turn for ever)

Both scripts (``lua/throttle_*.lua``) are atomic, so the simultaneous-guess rule holds across
processes too: no more checks of one pair run at once, anywhere, than failures it is still
allowed. A lockout has the same sliding window as the memory version: it lasts until the
oldest of the last ``max_failures`` failures is ``window`` seconds old, and that is the wait
the 429 announces.

When Redis does not answer, the process falls back to its own ``LoginThrottle`` (logged once,
and once again when Redis is back): logins keep working, limited per process as before.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from presence_app.backends.scripts import lua
from presence_app.backends.throttle import Key, LoginThrottle

log = logging.getLogger(__name__)

#: Seconds a turn may be held before Redis forgets it (a bcrypt check takes milliseconds).
TURN_LEASE = 30.0
#: Seconds between looks at Redis while another process holds the free turns.
POLL = 0.05
#: Seconds logins skip Redis after it failed to answer: a Redis that hangs (rather than
#: refusing) would otherwise cost every login a full command timeout.
RETRY_REDIS = 1.0


class RedisLoginThrottle:
    """``reserve``/``release`` like ``LoginThrottle``, with the counters in Redis."""

    def __init__(
        self, client: Any, prefix: str, max_failures: int, window: float, max_entries: int = 100_000
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.max_failures = max_failures  # 0: off
        self.window = window
        #: Used while Redis does not answer; also what ``len()`` reports.
        self.local = LoginThrottle(max_failures, window, max_entries)
        self._reserve = client.register_script(lua("clock", "throttle_reserve"))
        self._release = client.register_script(lua("clock", "throttle_release"))
        self._tokens: dict[Key, list[str]] = {}  # turns this process holds in Redis
        self._local_turns: dict[Key, int] = {}  # turns taken from the fallback
        self._released: dict[Key, asyncio.Event] = {}
        self.redis_down = False
        self._retry_at = 0.0  # monotonic time before which Redis is not asked

    def __len__(self) -> int:
        return len(self.local)

    def keys(self, username: str, address: str) -> list[str]:
        # '|' never occurs in an IP address, so the pair cannot be read two ways.
        pair = f"{address}|{username.lower()}"
        return [f"{self.prefix}:login-failures:{pair}", f"{self.prefix}:login-turns:{pair}"]

    async def reserve(self, username: str, address: str) -> float:
        """Wait for a turn; 0 with a turn taken, or the seconds to wait when locked."""
        if not self.max_failures:
            return 0.0
        key = (username.lower(), address)
        token = secrets.token_hex(8)
        while True:
            if time.monotonic() < self._retry_at:
                return await self._reserve_locally(key, username, address)
            try:
                state, wait_ms = await self._reserve(
                    keys=self.keys(username, address),
                    args=[
                        self.max_failures,
                        int(self.window * 1000),
                        int(TURN_LEASE * 1000),
                        token,
                    ],
                )
            except Exception as exc:  # Redis down or hung: count in this process meanwhile
                self._redis_failed(exc)
                return await self._reserve_locally(key, username, address)
            self._redis_answered()
            if state == 1:
                return int(wait_ms) / 1000.0
            if state == 2:
                self._tokens.setdefault(key, []).append(token)
                return 0.0
            # Every turn is taken: woken by a release here, or look again soon.
            released = self._released.setdefault(key, asyncio.Event())
            try:
                await asyncio.wait_for(released.wait(), POLL)
            except TimeoutError:
                pass

    async def _reserve_locally(self, key: Key, username: str, address: str) -> float:
        wait = await self.local.reserve(username, address)
        if wait <= 0:
            self._local_turns[key] = self._local_turns.get(key, 0) + 1
        return wait

    async def release(self, username: str, address: str, ok: bool | None) -> None:
        """Give a turn back, counting a failure (``ok`` False) or clearing them (True)."""
        if not self.max_failures:
            return
        key = (username.lower(), address)
        if self._local_turns.get(key):
            self._local_turns[key] -= 1
            if not self._local_turns[key]:
                del self._local_turns[key]
            await self.local.release(username, address, ok)
            return
        tokens = self._tokens.get(key)
        token = tokens.pop() if tokens else secrets.token_hex(8)
        if not tokens:
            self._tokens.pop(key, None)
        outcome = {True: "ok", False: "failed", None: "none"}[ok]
        try:
            await self._release(
                keys=self.keys(username, address),
                args=[self.max_failures, int(self.window * 1000), token, outcome],
            )
            self._redis_answered()
        except Exception as exc:  # the turn lapses by itself; the failure counts here
            self._redis_failed(exc)
            if ok is False:
                self.local.failed(username, address)
        finally:
            released = self._released.pop(key, None)
            if released is not None:
                released.set()

    def _redis_failed(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + RETRY_REDIS
        if not self.redis_down:
            self.redis_down = True
            log.warning(
                "Redis does not answer the login throttle (%s); counting failed logins "
                "in this process until it does",
                exc.__class__.__name__,
            )

    def _redis_answered(self) -> None:
        if self.redis_down:
            self.redis_down = False
            log.info("Redis answers the login throttle again; failed logins are shared again")
