"""Presence: the sockets of this process, the view of everyone's status, and fan-out.

Sockets reach this module only through the small ``Connection`` protocol that the web layer
implements; presence never imports Tornado's web or websocket modules. Every write to a socket
goes through ``presence_app.live.fanout.Fanout`` (coalesced events, shared snapshots, replies).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

from presence_app.accounts.service import AccountService
from presence_app.backends.base import Backend, UserState, presence_event
from presence_app.live.fanout import CLOSE_GOING_AWAY, Connection, Fanout
from presence_app.live.frames import SharedSnapshot, text_frame
from presence_app.live.ledger import OnlineLedger
from presence_app.runtime.gcpolicy import GcPolicy

log = logging.getLogger(__name__)

CLOSE_SESSION_ENDED = 4001
#: Revocations whose broadcast failed (Redis down), kept to be re-announced; past this many
#: the oldest are dropped (the re-check after a resync still closes their sockets).
MAX_UNANNOUNCED = 10_000


def iso_now() -> str:
    return _iso(dt.datetime.now(dt.UTC))


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else _iso(value)


def _iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a Z: 2026-11-24T14:03:12.123Z."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


__all__ = ["Connection", "PresenceService", "iso", "iso_now", "user_removed_message",
           "user_sessions_ended_message"]


def user_sessions_ended_message(username: str) -> str:
    """Broker message: every socket of ``username`` closes with 4001, in every process."""
    return json.dumps({"type": "user_sessions_ended", "username": username})


def user_removed_message(username: str) -> str:
    """Broker message: the account was deleted; every process closes its sockets and drops
    it from the list (clients get ``{"type": "removed"}``)."""
    return json.dumps({"type": "user_removed", "username": username})


def _row(username: str, state: UserState) -> bytes:
    return json.dumps({"username": username, "online": state.online,
                       "last_seen": state.last_seen, "version": state.version},
                      separators=(",", ":")).encode("utf-8")


class PresenceService:
    def __init__(self, node_id: str, backend: Backend, ledger: OnlineLedger,
                 accounts: AccountService) -> None:
        self.node_id = node_id
        self.backend = backend
        self.ledger = ledger
        self.accounts = accounts
        self._conns: dict[Connection, None] = {}       # insertion-ordered set
        self._by_user: dict[str, set[Connection]] = {}
        self._by_session: dict[str, set[Connection]] = {}
        self._expiry: dict[str, dt.datetime] = {}      # session id -> expires_at (UTC)
        self._unannounced: dict[str, None] = {}        # broker messages to publish again
        self._view: dict[str, UserState] = {}          # everyone's status as our clients know it
        self._rows: dict[str, bytes] = {}              # encoded snapshot row per user
        self._snapshot: SharedSnapshot | None = None   # built at most once per flush
        self._registered: set[str] = set()             # users the store believes we hold
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._gone: dict[str, None] = {}               # deleted accounts (see remove_user)
        self._forgetting: set[asyncio.Task[None]] = set()
        self.needs_resync = False
        self.closing = False
        self.events_applied = self.events_stale = 0  # read by /metrics
        self.gc = GcPolicy()
        self.fanout = Fanout(self.shared_snapshot, self.remove)

    # -- state the pages, the API and snapshots are rendered from ---------------------------
    async def load(self) -> None:
        """Fill the view from the database (every account) and the store (who is online)."""
        view = {u.username: UserState(False, 0, iso(u.last_seen))
                for u in await self.accounts.all_users()}
        try:
            states = await self.backend.states()
        except Exception as exc:  # Redis down at start: serve from the database, resync later
            log.warning("Presence store unavailable at start (%s)", exc)
            self.needs_resync, states = True, {}
        for username, state in states.items():
            if username not in view and not state.online:
                continue  # a deleted account the store still remembers
            old = view.get(username)
            if state.last_seen is None and old is not None and old.last_seen:
                state = UserState(state.online, state.version, old.last_seen)
            view[username] = state
        self._view = view
        self._rows.clear()
        self._snapshot = None

    def users(self) -> list[dict]:
        """Every user, online first, then by name: what the page and /api/users show."""
        items = sorted(self._view.items(), key=lambda kv: (not kv[1].online, kv[0].lower(), kv[0]))
        return [{"username": name, "online": s.online, "last_seen": s.last_seen,
                 "version": s.version} for name, s in items]

    def online_count(self) -> int:
        return sum(1 for s in self._view.values() if s.online)

    def shared_snapshot(self) -> SharedSnapshot:
        """The snapshot every socket joining now receives, encoded at most once per change.

        Rows are cached per user and joined in view order (clients order the list). A user
        with a socket here whose own online event is still on its way (the store round trip)
        is listed online already: that socket is open, so it is the truth, and the event that
        follows carries a newer version.
        """
        if self._snapshot is None:
            rows, cache, local = [], self._rows, self._by_user
            for name, state in self._view.items():
                row = cache.get(name)
                if row is None:
                    row = cache[name] = _row(name, state)
                if not state.online and name in local:
                    row = _row(name, UserState(True, state.version, state.last_seen or iso_now()))
                rows.append(row)
            self._snapshot = SharedSnapshot(b"[" + b",".join(rows) + b"]")
        return self._snapshot

    @property
    def socket_count(self) -> int:
        return len(self._conns)

    # -- local sockets --------------------------------------------------------------------
    def add(self, conn: Connection) -> None:
        """Register an open socket: its snapshot goes out with the next flush, then events."""
        self._conns[conn] = None
        self.gc.opened()
        self._by_session.setdefault(conn.session_id, set()).add(conn)
        expires = getattr(conn, "expires_at", None)
        if expires is not None:
            self._expiry[conn.session_id] = expires
        mine = self._by_user.setdefault(conn.username, set())
        mine.add(conn)
        self.ledger.mark(conn.user_id, len(mine))
        if len(mine) == 1:
            self._overlay_changed(conn.username)
            self.changed(conn.username)
        self.fanout.join(conn)
        if self.accounts.revoked(conn.session_id):
            # Revoked between the handshake's session lookup and now: a logout in that
            # window must not leave this socket open.
            self.close_session(conn.session_id)

    def _overlay_changed(self, username: str) -> None:
        """``username`` got its first or lost its last socket here: a snapshot that lists
        them online because of a socket here (see ``shared_snapshot``) must be rebuilt."""
        state = self._view.get(username)
        if state is None or not state.online:
            self._snapshot = None

    def reply(self, conn: Connection, text: str) -> None:
        """Answer one socket (pong, error), after its snapshot."""
        self.fanout.reply(conn, text_frame(text))

    def remove(self, conn: Connection, reconcile: bool = True) -> None:
        """Unregister a closed socket; its user's last one here brings the store in line
        (``reconcile``), except at shutdown, where one handover does it for every user."""
        if conn not in self._conns:
            return  # already removed (closed after a drop, a logout or a shutdown)
        del self._conns[conn]
        self.fanout.leave(conn)
        self.gc.closed(len(self._conns))
        if _discard(self._by_session, conn.session_id, conn) == 0:
            self._expiry.pop(conn.session_id, None)
        left = _discard(self._by_user, conn.username, conn)
        self.ledger.mark(conn.user_id, left)
        if left == 0:
            self._overlay_changed(conn.username)
            if reconcile:
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
                    event = await self.backend.attach(self.node_id, username, now)
                    self._registered.add(username)
                else:
                    event = await self.backend.detach(self.node_id, username, now)
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
        elif kind == "user_sessions_ended":
            self.close_user(message["username"])
        elif kind == "user_removed":
            self.remove_user(message["username"])

    def _apply(self, username: str, state: UserState) -> bool:
        """Take a newer state into the view; False for a stale or repeated one."""
        if username in self._gone:
            if not state.online and state.last_seen is not None:
                return False  # the deleted account's last sockets detaching: a remnant
            del self._gone[username]  # signed up again (announced never seen) or online
        current = self._view.get(username)
        if current is not None and current.version >= state.version:
            self.events_stale += 1
            return False
        self.events_applied += 1
        self._view[username] = state
        self._rows.pop(username, None)
        self._snapshot = None
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
        """Send ``text`` (one JSON message) to every socket of this process, with the next
        flush; encoded once, however many sockets."""
        self.fanout.publish(text_frame(text))

    # -- sessions ---------------------------------------------------------------------------
    async def end_session(self, session_id: str) -> None:
        """Close the session's sockets here at once and in every other process via the broker
        (logout, rotation at login). If the broker is down, the announcement is kept and
        made again once it is back (``announce_revocations``)."""
        self.close_session(session_id)
        await self._announce(json.dumps({"type": "session_ended", "session": session_id}))

    async def end_user_sessions(self, username: str) -> None:
        """Close every socket of ``username``, here and in every process (after
        ``AccountService.end_user_sessions`` deleted their sessions: an admin command)."""
        self.close_user(username)
        await self._announce(user_sessions_ended_message(username))

    async def _announce(self, message: str) -> None:
        try:
            await self.backend.publish(message)
        except Exception as exc:
            log.warning("Could not announce a revocation to other processes now (%s); "
                        "will announce it when the broker is back", exc)
            self._unannounced[message] = None
            if len(self._unannounced) > MAX_UNANNOUNCED:
                del self._unannounced[next(iter(self._unannounced))]

    async def announce_revocations(self) -> None:
        """Publish again the revocations whose announcement failed (in their order); what
        still fails stays for the next try."""
        sent = 0
        try:
            while self._unannounced:
                message = next(iter(self._unannounced))
                await self.backend.publish(message)  # raises: the rest waits for the next try
                self._unannounced.pop(message, None)
                sent += 1
        finally:
            if sent:
                log.info("Announced %d revocation(s) made while the broker was down", sent)

    @property
    def unannounced(self) -> int:
        return len(self._unannounced)

    def close_session(self, session_id: str) -> None:
        self.accounts.forget(session_id)
        for conn in list(self._by_session.get(session_id, ())):
            self.remove(conn)
            conn.close(CLOSE_SESSION_ENDED, "session ended")

    def close_user(self, username: str) -> None:
        """Close every socket of ``username`` (any case: names are unique regardless of
        case) in this process with 4001."""
        self.accounts.forget_user(username)
        key = username.lower()
        for name in [name for name in self._by_user if name.lower() == key]:
            for conn in list(self._by_user.get(name, ())):
                self.remove(conn)
                conn.close(CLOSE_SESSION_ENDED, "session ended")

    def remove_user(self, username: str) -> None:
        """An account was deleted (``presence users delete``): close its sockets here (4001),
        drop it from the view, tell every client (``removed``), and once this process has
        detached it, make the store forget it (or a resync would bring it back)."""
        self.close_user(username)
        key = username.lower()
        for name in [name for name in self._view if name.lower() == key]:
            del self._view[name]
            self._rows.pop(name, None)
            self._snapshot = None
            self._gone[name] = None
            if len(self._gone) > MAX_UNANNOUNCED:
                del self._gone[next(iter(self._gone))]
            self.broadcast(json.dumps({"type": "removed", "username": name}))
            task = asyncio.ensure_future(self._forget(name))
            self._forgetting.add(task)
            task.add_done_callback(self._forgetting.discard)

    async def _forget(self, username: str) -> None:
        try:
            running = self._reconciling.get(username)
            if running is not None:
                await asyncio.wait([running], timeout=5.0)
            await self.backend.forget(username)
        except Exception as exc:  # the next resync drops users the database no longer has
            log.warning("Could not remove deleted user %s from the presence store (%s)",
                        username, exc)

    def usernames(self) -> set[str]:
        return set(self._view)

    def prune(self, existing: set[str], among: set[str]) -> int:
        """Remove from the view (and from clients' lists) the users of ``among`` (the view
        before ``existing`` was read: a sign-up since is not judged) that are not in
        ``existing``, the accounts in the database: deletions this process missed."""
        gone = [name for name in among if name in self._view and name not in existing]
        for name in gone:
            self.remove_user(name)
        return len(gone)

    def close_expired(self, now: dt.datetime | None = None) -> int:
        """Close (4001) the sockets of every session that has expired; how many sessions."""
        now = now or dt.datetime.now(dt.UTC)
        ended = [sid for sid, expires in self._expiry.items() if expires <= now]
        for session_id in ended:
            log.info("Session %s... expired; closing its sockets", session_id[:8])
            self.close_session(session_id)
        return len(ended)

    async def recheck_sessions(self) -> int:
        """Close (4001) the sockets whose session no longer exists or has expired in the
        database: revocations this process may have missed (a Redis outage). One query per
        500 open sessions. Returns how many sessions were closed."""
        sessions = list(self._by_session)
        if not sessions:
            return 0
        live = await self.accounts.live_sessions(sessions)
        gone = [sid for sid in sessions if sid not in live and sid in self._by_session]
        for session_id in gone:
            self.close_session(session_id)
        if gone:
            log.info("Closed the sockets of %d session(s) revoked or expired meanwhile",
                     len(gone))
        return len(gone)

    async def user_signed_up(self, username: str) -> None:
        """Announce a new account to every client (as offline, never seen)."""
        try:
            await self.backend.announce(username)
        except Exception as exc:  # resync reloads accounts from the database
            self.needs_resync = True
            log.warning("Could not announce new user %s now (%s)", username, exc)

    # -- shutdown ---------------------------------------------------------------------------
    def close_all(self) -> None:
        """Shutdown: every socket closed with 1001. No store update per user (10,000 of
        them took seconds of the 5 s a SIGTERM allows): the handover (or reap) that follows
        lets every user of this process go in one step."""
        self.fanout.flush()  # what was already applied still reaches the clients
        self.fanout.cancel()
        for conn in list(self._conns):
            self.remove(conn, reconcile=False)
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
