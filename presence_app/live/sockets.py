"""The open sockets of this process, indexed by user and by session.

No I/O and no policy: ``PresenceService`` decides what a socket's arrival or departure means
(a store update, a snapshot rebuilt, a ledger row); this only keeps the indexes consistent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from presence_app.live.fanout import Connection


class LocalSockets:
    def __init__(self) -> None:
        self._conns: dict[Connection, None] = {}  # insertion-ordered set
        self._by_user: dict[str, set[Connection]] = {}
        self._by_session: dict[str, set[Connection]] = {}
        self._expiry: dict[str, dt.datetime] = {}  # session id -> expires_at (UTC)

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._conns))

    def add(self, conn: Connection) -> int:
        """Index an open socket; how many sockets its user has here now."""
        self._conns[conn] = None
        self._by_session.setdefault(conn.session_id, set()).add(conn)
        expires = getattr(conn, "expires_at", None)
        if expires is not None:
            self._expiry[conn.session_id] = expires
        mine = self._by_user.setdefault(conn.username, set())
        mine.add(conn)
        return len(mine)

    def remove(self, conn: Connection) -> int | None:
        """Forget a socket; how many sockets its user has left here (None: not indexed)."""
        if conn not in self._conns:
            return None
        del self._conns[conn]
        if _discard(self._by_session, conn.session_id, conn) == 0:
            self._expiry.pop(conn.session_id, None)
        return _discard(self._by_user, conn.username, conn)

    def holds(self, username: str) -> bool:
        return username in self._by_user

    def users(self) -> set[str]:
        return set(self._by_user)

    def sessions(self) -> list[str]:
        return list(self._by_session)

    def has_session(self, session_id: str) -> bool:
        return session_id in self._by_session

    def of_session(self, session_id: str) -> list[Connection]:
        return list(self._by_session.get(session_id, ()))

    def of_user(self, username: str) -> list[Connection]:
        """Every socket of ``username`` in any case (names are unique regardless of case)."""
        key = username.lower()
        return [
            conn
            for name, conns in list(self._by_user.items())
            if name.lower() == key
            for conn in conns
        ]

    def counts(self) -> Iterator[tuple[Connection, int]]:
        """One socket of each user here, with how many that user has."""
        for conns in self._by_user.values():
            yield next(iter(conns)), len(conns)

    def expired(self, now: dt.datetime) -> list[str]:
        """The sessions with a socket here that have expired by ``now``."""
        return [sid for sid, expires in self._expiry.items() if expires <= now]


def _discard(index: dict[str, set[Connection]], key: str, conn: Connection) -> int:
    conns = index.get(key)
    if conns is None:
        return 0
    conns.discard(conn)
    if not conns:
        del index[key]
        return 0
    return len(conns)
