"""Why presence resynchronises: a bounded set of reasons, and the requests waiting for the next
rebuild.

Anything that finds the shared state may no longer match this process (a lost subscription, a
reset store, a failed write) asks for a resync with one of ``REASONS``; the sync loop takes the
requests when it rebuilds. The reason names one log line and the label of
``presence_resyncs_total{reason}``, so the set is fixed here (a label set must stay bounded).
"""

from __future__ import annotations

#: The broker lost its subscription and got it back: messages published meanwhile were missed.
BROKER_RECONNECTED = "broker_reconnected"
#: The store's epoch changed: Redis restarted empty or was flushed.
STORE_RESET = "store_reset"
#: This process's heartbeat lapsed and another process reaped it as dead.
REAPED = "reaped"
#: The store did not answer (a heartbeat, or loading at start); resync once it does.
STORE_UNREACHABLE = "store_unreachable"
#: An attach, detach or sign-up announcement of this process did not reach the store.
STORE_WRITE_FAILED = "store_write_failed"
#: A resync or a reap raised; the next heartbeat tries again.
MAINTENANCE_FAILED = "maintenance_failed"
#: The database re-check of open sockets' sessions after a resync failed.
SESSION_CHECK_FAILED = "session_check_failed"
#: Settling the users an emptied store no longer knows failed.
SETTLE_FAILED = "settle_failed"

REASONS = (
    BROKER_RECONNECTED,
    STORE_RESET,
    REAPED,
    STORE_UNREACHABLE,
    STORE_WRITE_FAILED,
    MAINTENANCE_FAILED,
    SESSION_CHECK_FAILED,
    SETTLE_FAILED,
)


class ResyncRequests:
    """Reasons asked for since the last rebuild began, in the order first asked."""

    def __init__(self) -> None:
        self._pending: dict[str, None] = {}

    def add(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown resync reason {reason!r}")
        self._pending.setdefault(reason, None)

    @property
    def first(self) -> str | None:
        """The first reason asked for, or None when no resync is wanted."""
        return next(iter(self._pending), None)

    def take(self) -> list[str]:
        """Every pending reason (first asked first); none is pending afterwards."""
        reasons, self._pending = list(self._pending), {}
        return reasons
