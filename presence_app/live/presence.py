"""Presence: the sockets of this process, the view of everyone's status, and fan-out.

Sockets reach this module only through the small ``Connection`` protocol that the web layer
implements; presence never imports Tornado's web or websocket modules. Every write to a socket
goes through ``presence_app.live.fanout.Fanout`` (coalesced events, shared snapshots, replies).

``PresenceSync`` keeps the shared state true through the narrow methods of the "resync" and
"shutdown" sections: it asks, presence rebuilds; neither touches the other's state.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from presence_app.accounts.service import AccountService, UserRecord
from presence_app.backends.base import Backend, UserState, presence_event
from presence_app.live.fanout import CLOSE_GOING_AWAY, Connection, Fanout
from presence_app.live.frames import SharedSnapshot, text_frame
from presence_app.live.ledger import OnlineLedger
from presence_app.live.registration import StoreRegistration
from presence_app.live.resync import STORE_UNREACHABLE, STORE_WRITE_FAILED, ResyncRequests
from presence_app.live.revocations import (
    CLOSE_SESSION_ENDED,
    Revocations,
    user_removed_message,
    user_sessions_ended_message,
)
from presence_app.live.sockets import LocalSockets
from presence_app.live.view import PresenceView, iso, iso_now
from presence_app.runtime.gcpolicy import GcPolicy

log = logging.getLogger(__name__)

__all__ = [
    "CLOSE_SESSION_ENDED",
    "Connection",
    "PresenceService",
    "iso",
    "iso_now",
    "user_removed_message",
    "user_sessions_ended_message",
]


class PresenceService:
    def __init__(
        self, node_id: str, backend: Backend, ledger: OnlineLedger, accounts: AccountService
    ) -> None:
        self.node_id = node_id
        self.backend = backend
        self.ledger = ledger
        self.accounts = accounts
        self._sockets = LocalSockets()
        self._view = PresenceView()
        self._revocations = Revocations(backend, accounts, self._sockets, self.remove)
        self._resync = ResyncRequests()
        self._registration = StoreRegistration(
            node_id, backend, ledger, self._sockets.holds, self.request_resync
        )
        self._closing = False
        self._gc = GcPolicy()
        self.fanout = Fanout(self.shared_snapshot, self.remove)

    # -- what the page, the API, snapshots and /metrics read ----------------------------------
    async def load(self) -> None:
        """Fill the view from the database (every account) and the store (who is online)."""
        accounts = await self.accounts.all_users()
        try:
            states = await self.backend.states()
        except Exception as exc:  # Redis down at start: serve from the database, resync later
            log.warning("Presence store unavailable at start (%s)", exc)
            self.request_resync(STORE_UNREACHABLE)
            states = {}
        self._view.replace(accounts, states)

    def users(self) -> list[dict]:
        """Every user, online first, then by name: what the page and /api/users show."""
        return self._view.users()

    def online_count(self) -> int:
        return self._view.online_count()

    def shared_snapshot(self) -> SharedSnapshot:
        """The snapshot every socket joining now receives (see ``PresenceView.snapshot``)."""
        return self._view.snapshot(self._sockets.holds)

    @property
    def socket_count(self) -> int:
        return len(self._sockets)

    def connections(self) -> list[Connection]:
        """The open sockets of this process, oldest first."""
        return list(self._sockets)

    def local_users(self) -> set[str]:
        return self._sockets.users()

    @property
    def events_applied(self) -> int:
        return self._view.applied

    @property
    def events_stale(self) -> int:
        return self._view.stale

    @property
    def unannounced(self) -> int:
        """Revocations not yet told to the other processes (the broker was down)."""
        return len(self._revocations)

    # -- local sockets --------------------------------------------------------------------
    def add(self, conn: Connection) -> None:
        """Register an open socket: its snapshot goes out with the next flush, then events."""
        if self._closing:  # opened while shutting down: it would outlive the handover
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
            return
        mine = self._sockets.add(conn)
        self._gc.opened()
        self.ledger.mark(conn.user_id, mine)
        if mine == 1:
            self._view.overlay_changed(conn.username)
            self._registration.changed(conn.username)  # brings the store in line
        self.fanout.join(conn)
        if self.accounts.revoked(conn.session_id):
            # Revoked between the handshake's session lookup and now: a logout in that
            # window must not leave this socket open.
            self.close_session(conn.session_id)

    def reply(self, conn: Connection, text: str) -> None:
        """Answer one socket (pong, error), after its snapshot."""
        self.fanout.reply(conn, text_frame(text))

    def remove(self, conn: Connection, reconcile: bool = True) -> None:
        """Unregister a closed socket; its user's last one here brings the store in line
        (``reconcile``), except at shutdown, where one handover does it for every user."""
        left = self._sockets.remove(conn)
        if left is None:
            return  # already removed (closed after a drop, a logout or a shutdown)
        self.fanout.leave(conn)
        self._gc.closed(len(self._sockets))
        self.ledger.mark(conn.user_id, left)
        if left == 0:
            self._view.overlay_changed(conn.username)
            if reconcile:
                self._registration.changed(conn.username)

    async def settled(self, timeout: float = 5.0) -> None:
        """Wait until every pending store update of this process is done."""
        await self._registration.settled(timeout)

    def broadcast(self, text: str) -> None:
        """Send ``text`` (one JSON message) to every socket of this process, with the next
        flush; encoded once, however many sockets."""
        self.fanout.publish(text_frame(text))

    # -- messages from the broker: the one delivery path ------------------------------------
    def on_message(self, text: str) -> None:
        message = json.loads(text)
        kind = message.get("type")
        if kind == "presence":
            state = UserState(
                bool(message["online"]), int(message["version"]), message.get("last_seen")
            )
            if self._view.apply(message["username"], state):
                log.debug(
                    "Presence %s online=%s v%s", message["username"], state.online, state.version
                )
                self.broadcast(text)
        elif kind == "session_ended":
            self.close_session(message["session"])
        elif kind == "user_sessions_ended":
            self.close_user(message["username"])
        elif kind == "user_removed":
            self.remove_user(message["username"])

    def _apply_and_broadcast(self, username: str, state: UserState) -> None:
        if self._view.apply(username, state):
            self.broadcast(presence_event(username, state))

    def _add_accounts(self, accounts: list[UserRecord]) -> None:
        """List the accounts the view does not know (sign-ups missed), offline."""
        for user in accounts:
            if not self._view.known(user.username):
                self._apply_and_broadcast(user.username, UserState(False, 0, iso(user.last_seen)))

    async def user_signed_up(self, username: str) -> None:
        """Announce a new account to every client (as offline, never seen)."""
        try:
            await self.backend.announce(username)
        except Exception as exc:  # resync reloads accounts from the database
            self.request_resync(STORE_WRITE_FAILED)
            log.warning("Could not announce new user %s now (%s)", username, exc)

    # -- sessions and accounts ending -------------------------------------------------------
    async def end_session(self, session_id: str) -> None:
        """Close the session's sockets here at once and in every other process via the broker
        (logout, rotation at login). If the broker is down, the announcement is kept and
        made again once it is back (``announce_revocations``)."""
        await self._revocations.end_session(session_id)

    async def end_user_sessions(self, username: str) -> None:
        """Close every socket of ``username``, here and in every process (after
        ``AccountService.end_user_sessions`` deleted their sessions: an admin command)."""
        await self._revocations.end_user_sessions(username)

    async def announce_revocations(self) -> None:
        """Publish again the revocations whose announcement failed (in their order); what
        still fails stays for the next try."""
        await self._revocations.announce_again()

    def close_session(self, session_id: str) -> None:
        self._revocations.close_session(session_id)

    def close_user(self, username: str) -> None:
        """Close every socket of ``username`` (any case: names are unique regardless of
        case) in this process with 4001."""
        self._revocations.close_user(username)

    def remove_user(self, username: str) -> None:
        """An account was deleted (``presence users delete``): close its sockets here (4001),
        drop it from the view, tell every client (``removed``), and once this process has
        detached it, make the store forget it (or a resync would bring it back)."""
        self.close_user(username)
        for name in self._view.drop(username):
            self.broadcast(json.dumps({"type": "removed", "username": name}))
            self._registration.forget(name)

    def _prune(self, existing: set[str], among: set[str]) -> int:
        """Remove from the view (and from clients' lists) the users of ``among`` (the view
        before ``existing`` was read: a sign-up since is not judged) that are not in
        ``existing``, the accounts in the database: deletions this process missed."""
        gone = [name for name in among if self._view.known(name) and name not in existing]
        for name in gone:
            self.remove_user(name)
        return len(gone)

    def close_expired(self, now: dt.datetime | None = None) -> int:
        """Close (4001) the sockets of every session that has expired; how many sessions."""
        return self._revocations.close_expired(now or dt.datetime.now(dt.UTC))

    async def recheck_sessions(self) -> int:
        """Close (4001) the sockets whose session no longer exists or has expired in the
        database: revocations this process may have missed (a Redis outage). One query per
        500 open sessions. Returns how many sessions were closed."""
        return await self._revocations.recheck_sessions()

    async def check_database(self) -> None:
        """Without Redis, what another process (an admin command) cannot tell us: close the
        sockets of sessions revoked in the database, remove deleted accounts, list added
        ones."""
        await self.recheck_sessions()
        before = self._view.usernames()
        accounts = await self.accounts.all_users()
        self._prune({user.username for user in accounts}, before)
        self._add_accounts(accounts)  # added by `presence users add`

    # -- resync: asked for by anyone, driven by PresenceSync ---------------------------------
    def request_resync(self, reason: str) -> None:
        """Ask for a rebuild (``reason``: one of ``presence_app.live.resync.REASONS``); the
        sync loop runs it once the store answers."""
        self._resync.add(reason)

    @property
    def resync_requested(self) -> str | None:
        """The first reason asked for since the last rebuild began, or None."""
        return self._resync.first

    def take_resync_reasons(self) -> list[str]:
        """A rebuild begins: the reasons asked for so far (first first) are answered by it."""
        return self._resync.take()

    def registered_users(self) -> frozenset[str]:
        """The users this process believes the store lists as held by it."""
        return self._registration.registered()

    async def rebuild(self, held: set[str]) -> dict[str, UserState]:
        """Make the store and the view true again after they may have diverged.

        ``held`` (what the store lists as ours now) replaces the registered set, and the
        store is brought in line with our sockets for every user of either; then the view is
        corrected from the accounts and the store's states, and our clients with it. Returns
        the states the view was corrected from."""
        self._registration.replace(held)
        for username in held | self._sockets.users():
            self._registration.changed(username)
        await self.settled()
        for conn, count in self._sockets.counts():  # the online-users table is rewritten
            self.ledger.mark(conn.user_id, count)
        before = self._view.usernames()
        accounts = await self.accounts.all_users()
        names = {user.username for user in accounts}
        self._add_accounts(accounts)  # sign-ups we may have missed
        states = await self.backend.states()
        self._prune(names | {name for name, state in states.items() if state.online}, before)
        for username, state in states.items():
            if username in names or state.online:  # not a deleted account's remnant
                self._apply_and_broadcast(username, state)
        return states

    # -- shutdown ---------------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        """True once ``shutdown`` has begun: new sockets are refused."""
        return self._closing

    async def shutdown(self, timeout: float = 2.0) -> None:
        """Refuse new sockets, close every socket with 1001, stop the GC timer, and give the
        store updates in flight ``timeout`` s; what still runs then is cancelled.

        No store update per user (10,000 of them took seconds of the 5 s a SIGTERM allows):
        the handover (or reap) that follows lets every user of this process go in one step."""
        self._closing = True
        self.fanout.flush()  # what was already applied still reaches the clients
        self.fanout.cancel()
        for conn in list(self._sockets):
            self.remove(conn, reconcile=False)
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        self._gc.cancel()
        await self._registration.close(timeout)
