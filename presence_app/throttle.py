"""Failed-login throttling: after too many failures for one name from one address, wait.

Per process and in memory (a deployment of N processes allows up to N times the limit);
successful logins are never throttled, as the contract requires for load tests.
"""
from __future__ import annotations

import time
from collections import deque


class LoginThrottle:
    def __init__(self, max_failures: int, window: float) -> None:
        self.max_failures = max_failures  # 0: off
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, username: str, address: str) -> float:
        """Seconds to wait before this name may try again from this address (0: go ahead)."""
        if not self.max_failures:
            return 0.0
        failures = self._recent((username.lower(), address))
        if len(failures) < self.max_failures:
            return 0.0
        return max(failures[0] + self.window - time.monotonic(), 0.0)

    def failed(self, username: str, address: str) -> None:
        if not self.max_failures:
            return
        if len(self._failures) > 50_000:  # bound memory under a spray of names
            self._failures.clear()
        key = (username.lower(), address)
        self._recent(key).append(time.monotonic())
        while len(self._failures[key]) > self.max_failures:
            self._failures[key].popleft()

    def succeeded(self, username: str, address: str) -> None:
        self._failures.pop((username.lower(), address), None)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        horizon = time.monotonic() - self.window
        while failures and failures[0] < horizon:
            failures.popleft()
        return failures
