"""Presence: the sockets of this process, the view of everyone's status, and fan-out.

Sockets reach this module only through the small ``Connection`` protocol that the web layer
implements; presence never imports Tornado's web or websocket modules.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any, Callable, Protocol

from presence_app.accounts import AccountService
from presence_app.broker import Broker
from presence_app.gcpolicy import GcPolicy
from presence_app.ledger import OnlineLedger
from presence_app.store import PresenceStore, UserState, presence_event

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_SESSION_ENDED = 4001


def iso_now() -> str:
    return _iso(dt.datetime.now(dt.timezone.utc))


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z: 2026-11-24T14:03:12.123Z."""
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


class Connection(Protocol):
    username: str
    user_id: int
    session_id: str

    def send(self, payload: Any) -> bool:
        """Queue ``payload`` (made by ``PresenceService.encode``); False if the socket is
        gone or over its send-buffer limit."""

    def close(self, code: int, reason: str) -> None:
        ...


class PresenceService:
    def __init__(self, node_id: str, broker: Broker, store: PresenceStore,
                 ledger: OnlineLedger, accounts: AccountService) -> None:
        self.node_id = node_id
        self.broker = broker
        self.store = store
        self.ledger = ledger
        self.accounts = accounts
        self._conns: dict[Connection, None] = {}       # insertion-ordered set
        self._by_user: dict[str, set[Connection]] = {}
        self._by_session: dict[str, set[Connection]] = {}
        self._view: dict[str, UserState] = {}          # everyone's status as our clients know it
        self._view_json: str | None = None             # cached encoded users list
        self._registered: set[str] = set()             # users the store believes we hold
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self.needs_resync = False
        self.closing = False
        # The web layer registers how to encode an event for its sockets (a WebSocket frame);
        # it runs once per event, not once per socket.
        self.encode: Callable[[str], Any] = lambda text: text
        self.gc = GcPolicy()

    # -- state the pages, the API and snapshots are rendered from ---------------------------
    async def load(self) -> None:
        """Fill the view from the database (every account) and the store (who is online)."""
        view = {u.username: UserState(False, 0, iso(u.last_seen))
                for u in await self.accounts.all_users()}
        try:
            states = await self.store.states()
        except Exception as exc:  # Redis down at start: serve from the database, resync later
            log.warning("Presence store unavailable at start (%s)", exc)
            self.needs_resync, states = True, {}
        for username, state in states.items():
            old = view.get(username)
            if state.last_seen is None and old is not None and old.last_seen:
                state = UserState(state.online, state.version, old.last_seen)
            view[username] = state
        self._view = view
        self._view_json = None

    def users(self) -> list[dict]:
        """Every user, online first, then by name: what the page and /api/users show."""
        items = sorted(self._view.items(), key=lambda kv: (not kv[1].online, kv[0].lower(), kv[0]))
        return [{"username": name, "online": s.online, "last_seen": s.last_seen,
                 "version": s.version} for name, s in items]

    def online_count(self) -> int:
        return sum(1 for s in self._view.values() if s.online)

    def snapshot(self, me: str) -> str:
        state = self._view.get(me)
        if state is not None and state.online:
            if self._view_json is None:
                self._view_json = json.dumps(self.users(), separators=(",", ":"))
            users_json = self._view_json
        else:  # our own online event is still on its way: list ourselves online already
            users = self.users()
            for item in users:
                if item["username"] == me:
                    item["online"], item["last_seen"] = True, item["last_seen"] or iso_now()
            users_json = json.dumps(users, separators=(",", ":"))
        return '{"type":"snapshot","me":%s,"users":%s}' % (json.dumps(me), users_json)

    @property
    def socket_count(self) -> int:
        return len(self._conns)

    # -- local sockets --------------------------------------------------------------------
    def add(self, conn: Connection) -> str:
        """Register an open socket; returns the snapshot to send it first."""
        self._conns[conn] = None
        self.gc.opened()
        self._by_session.setdefault(conn.session_id, set()).add(conn)
        mine = self._by_user.setdefault(conn.username, set())
        mine.add(conn)
        self.ledger.mark(conn.user_id, len(mine))
        if len(mine) == 1:
            self.changed(conn.username)
        return self.snapshot(conn.username)

    def remove(self, conn: Connection) -> None:
        if conn not in self._conns:
            return  # already removed (closed after a drop, a logout or a shutdown)
        del self._conns[conn]
        self.gc.closed(len(self._conns))
        _discard(self._by_session, conn.session_id, conn)
        left = _discard(self._by_user, conn.username, conn)
        self.ledger.mark(conn.user_id, left)
        if left == 0:
            self.changed(conn.username)

    def changed(self, username: str) -> None:
        """Bring the store in line with our sockets of ``username`` (one task per user)."""
        if username not in self._reconciling:
            task = asyncio.ensure_future(self._reconcile(username))
            self._reconciling[username] = task

    async def _reconcile(self, username: str) -> None:
        try:
            while True:
                want = bool(self._by_user.get(username))
                if want == (username in self._registered):
                    return
                now = iso_now()
                if want:
                    event = await self.store.attach(self.node_id, username, now)
                    self._registered.add(username)
                else:
                    event = await self.store.detach(self.node_id, username, now)
                    self._registered.discard(username)
                if event:
                    self.ledger.record([event])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.needs_resync = True
            log.warning("Presence store unavailable for %s (%s); will resynchronise",
                        username, exc)
        finally:
            self._reconciling.pop(username, None)

    async def settled(self, timeout: float = 5.0) -> None:
        """Wait until every pending store update of this process is done."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._reconciling and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(list(self._reconciling.values()), timeout=0.5)

    # -- messages from the broker: the one delivery path ------------------------------------
    def on_message(self, text: str) -> None:
        message = json.loads(text)
        kind = message.get("type")
        if kind == "presence":
            state = UserState(bool(message["online"]), int(message["version"]),
                              message.get("last_seen"))
            if self._apply(message["username"], state):
                log.debug("Presence %s online=%s v%s", message["username"], state.online,
                          state.version)
                self.broadcast(text)
        elif kind == "session_ended":
            self.close_session(message["session"])

    def _apply(self, username: str, state: UserState) -> bool:
        """Take a newer state into the view; False for a stale or repeated one."""
        current = self._view.get(username)
        if current is not None and current.version >= state.version:
            return False
        self._view[username] = state
        self._view_json = None
        return True

    def apply_and_broadcast(self, username: str, state: UserState) -> None:
        if self._apply(username, state):
            self.broadcast(presence_event(username, state))

    def known(self, username: str) -> bool:
        return username in self._view

    def local_users(self) -> set[str]:
        return set(self._by_user)

    @property
    def registered(self) -> set[str]:
        return self._registered

    def remark_all(self) -> None:
        """Mark every local user's row dirty so the online-users table is rewritten."""
        for conns in self._by_user.values():
            conn = next(iter(conns))
            self.ledger.mark(conn.user_id, len(conns))

    def broadcast(self, text: str) -> None:
        payload = self.encode(text)
        dropped = [conn for conn in self._conns if not conn.send(payload)]
        for conn in dropped:
            log.info("Dropping socket of %s: gone or too slow", conn.username)
            self.remove(conn)
            conn.close(CLOSE_GOING_AWAY, "send buffer full")

    # -- sessions ---------------------------------------------------------------------------
    async def end_session(self, session_id: str) -> None:
        """Close the session's sockets here at once and in every other process via the broker."""
        self.close_session(session_id)
        try:
            await self.broker.publish(json.dumps({"type": "session_ended", "session": session_id}))
        except Exception as exc:
            log.warning("Could not announce the end of a session to other processes: %s", exc)

    def close_session(self, session_id: str) -> None:
        self.accounts.forget(session_id)
        for conn in list(self._by_session.get(session_id, ())):
            self.remove(conn)
            conn.close(CLOSE_SESSION_ENDED, "session ended")

    async def user_signed_up(self, username: str) -> None:
        """Announce a new account to every client (as offline, never seen)."""
        try:
            await self.store.announce(username)
        except Exception as exc:  # resync reloads accounts from the database
            self.needs_resync = True
            log.warning("Could not announce new user %s now (%s)", username, exc)

    # -- shutdown ---------------------------------------------------------------------------
    def close_all(self) -> None:
        for conn in list(self._conns):
            self.remove(conn)
            conn.close(CLOSE_GOING_AWAY, "server shutting down")


def _discard(index: dict[str, set[Connection]], key: str, conn: Connection) -> int:
    conns = index.get(key)
    if conns is None:
        return 0
    conns.discard(conn)
    if not conns:
        del index[key]
        return 0
    return len(conns)
