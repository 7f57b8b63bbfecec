"""Failed-login throttling: after too many failures for one name from one address, wait.

Per process and in memory (a deployment of N processes allows up to N times the limit);
successful logins are never throttled, as the contract requires for load tests.

Memory is bounded by ``max_entries`` (name, address) pairs. When a new pair needs room, the
pair whose last failure is oldest goes, and pairs that are still counting go before locked
ones: a spray of distinct names (cheap: an over-long password skips bcrypt) can only push
out other sprayed names, never reopen a locked name. Only when every remembered pair is
locked does the oldest lock go; replacing a lock then costs ``max_failures`` failures.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque

Key = tuple[str, str]


class LoginThrottle:
    def __init__(self, max_failures: int, window: float, max_entries: int = 100_000) -> None:
        self.max_failures = max_failures  # 0: off
        self.window = window
        self.max_entries = max(max_entries, 1)
        # Least recently failed first. A pair lives in exactly one of the two.
        self._counting: OrderedDict[Key, deque[float]] = OrderedDict()
        self._locked: OrderedDict[Key, deque[float]] = OrderedDict()

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
