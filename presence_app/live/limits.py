"""Per-client limits on the socket side: caps on open sockets, a rate for client messages.

Off by default where docs/PROTOCOL.md asks (load tests open 10,000 sockets of one session from
127.0.0.1); the message rate is on, far above what a page sends (one ping every 25 s).
"""

from __future__ import annotations

import time
from collections import Counter


class SocketCaps:
    """Counts open sockets per user and per client address; 0 means no cap."""

    def __init__(self, per_user: int, per_address: int) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self._users: Counter[str] = Counter()
        self._addresses: Counter[str] = Counter()

    def refusal(self, username: str, address: str) -> str | None:
        """Why one more socket of ``username`` from ``address`` is refused, or None."""
        if self.per_user and self._users[username] >= self.per_user:
            return f"too many open sockets for this user (at most {self.per_user})"
        if self.per_address and self._addresses[address] >= self.per_address:
            return f"too many open sockets from this address (at most {self.per_address})"
        return None

    def open(self, username: str, address: str) -> str | None:
        """Count a socket that opened, or say why it is over a cap (then it is not counted)."""
        reason = self.refusal(username, address)
        if reason is None:
            self._users[username] += 1
            self._addresses[address] += 1
        return reason

    def close(self, username: str, address: str) -> None:
        for counter, key in ((self._users, username), (self._addresses, address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


class MessageRate:
    """A token bucket: ``rate`` messages a second on average, bursts of ``burst``.

    ``rate`` 0 turns it off."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic() if now is None else now

    def allow(self, now: float | None = None) -> bool:
        """Take one token: False when the client is over its rate."""
        if not self.rate:
            return True
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
