"""Everyone's status as this process's clients know it, and the snapshot rendered from it.

The view takes each user's newest state (by version) from the broker's events, the database
(every account) and the store; the page, ``/api/users`` and every snapshot are read from it.
It does no I/O: ``PresenceService`` feeds it and fans out what it accepts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable

from presence_app.accounts.service import UserRecord
from presence_app.backends.base import UserState
from presence_app.live.frames import SharedSnapshot

#: Deleted accounts remembered (to ignore their last sockets' events); past this many the
#: oldest are forgotten.
MAX_GONE = 10_000


def iso_now() -> str:
    return _iso(dt.datetime.now(dt.UTC))


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z: 2026-11-24T14:03:12.123Z."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _row(username: str, state: UserState) -> bytes:
    return json.dumps(
        {
            "username": username,
            "online": state.online,
            "last_seen": state.last_seen,
            "version": state.version,
        },
        separators=(",", ":"),
    ).encode("utf-8")


class PresenceView:
    def __init__(self) -> None:
        self._states: dict[str, UserState] = {}
        self._rows: dict[str, bytes] = {}  # encoded snapshot row per user
        self._snapshot: SharedSnapshot | None = None  # built at most once per change
        self._gone: dict[str, None] = {}  # deleted accounts (see drop)
        self.applied = self.stale = 0  # read by /metrics

    def replace(self, accounts: Iterable[UserRecord], states: dict[str, UserState]) -> None:
        """Start over from every account (offline, last seen as the database says) and the
        store's states (who is online)."""
        view = {u.username: UserState(False, 0, iso(u.last_seen)) for u in accounts}
        for username, state in states.items():
            if username not in view and not state.online:
                continue  # a deleted account the store still remembers
            old = view.get(username)
            if state.last_seen is None and old is not None and old.last_seen:
                state = UserState(state.online, state.version, old.last_seen)
            view[username] = state
        self._states = view
        self._rows.clear()
        self._snapshot = None

    def users(self) -> list[dict]:
        """Every user, online first, then by name: what the page and /api/users show."""
        items = sorted(
            self._states.items(), key=lambda kv: (not kv[1].online, kv[0].lower(), kv[0])
        )
        return [
            {"username": name, "online": s.online, "last_seen": s.last_seen, "version": s.version}
            for name, s in items
        ]

    def online_count(self) -> int:
        return sum(1 for s in self._states.values() if s.online)

    def online(self) -> set[str]:
        return {name for name, s in self._states.items() if s.online}

    def known(self, username: str) -> bool:
        return username in self._states

    def usernames(self) -> set[str]:
        return set(self._states)

    def apply(self, username: str, state: UserState) -> bool:
        """Take a newer state; False for a stale or repeated one."""
        if username in self._gone:
            if not state.online and state.last_seen is not None:
                return False  # the deleted account's last sockets detaching: a remnant
            del self._gone[username]  # signed up again (announced never seen) or online
        current = self._states.get(username)
        if current is not None and current.version >= state.version:
            self.stale += 1
            return False
        self.applied += 1
        self._states[username] = state
        self._rows.pop(username, None)
        self._snapshot = None
        return True

    def drop(self, username: str) -> list[str]:
        """Remove a deleted account (any case: names are unique regardless of case) and
        ignore its remnants from now on; the names removed."""
        key = username.lower()
        names = [name for name in self._states if name.lower() == key]
        for name in names:
            del self._states[name]
            self._rows.pop(name, None)
            self._snapshot = None
            self._gone[name] = None
            if len(self._gone) > MAX_GONE:
                del self._gone[next(iter(self._gone))]
        return names

    def overlay_changed(self, username: str) -> None:
        """``username`` got its first or lost its last socket here: a snapshot that lists
        them online because of a socket here (see ``snapshot``) must be rebuilt."""
        state = self._states.get(username)
        if state is None or not state.online:
            self._snapshot = None

    def snapshot(self, local: Callable[[str], bool]) -> SharedSnapshot:
        """The snapshot every socket joining now receives, encoded at most once per change.

        Rows are cached per user and joined in view order (clients order the list). A user
        with a socket here (``local(name)``) whose own online event is still on its way (the store
        round trip) is listed online already: that socket is open, so it is the truth, and
        the event that follows carries a newer version.
        """
        if self._snapshot is None:
            rows, cache = [], self._rows
            for name, state in self._states.items():
                row = cache.get(name)
                if row is None:
                    row = cache[name] = _row(name, state)
                if not state.online and local(name):
                    row = _row(name, UserState(True, state.version, state.last_seen or iso_now()))
                rows.append(row)
            self._snapshot = SharedSnapshot(b"[" + b",".join(rows) + b"]")
        return self._snapshot
