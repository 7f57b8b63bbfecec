"""Revocations: the sockets of ended sessions close (4001) here at once and in every process.

A logout, a login's rotation or an admin command closes sockets here at once; the other
processes learn of it from a broker message. If the broker is down, the message is kept (in
order, bounded) and published again once it is back: the re-check of open sockets' sessions
after a resync closes them too, but sooner is better. Sessions that expire, or that the
database no longer has, are closed the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable

from presence_app.accounts.service import AccountService
from presence_app.backends.base import Backend
from presence_app.live.fanout import Connection
from presence_app.live.sockets import LocalSockets

log = logging.getLogger(__name__)

CLOSE_SESSION_ENDED = 4001
#: Revocations whose broadcast failed, kept to be re-announced; past this many the oldest are
#: dropped (the re-check after a resync still closes their sockets).
MAX_UNANNOUNCED = 10_000


def session_ended_message(session_id: str) -> str:
    """Backend message: every socket of the session closes with 4001, in every process."""
    return json.dumps({"type": "session_ended", "session": session_id})


def user_sessions_ended_message(username: str) -> str:
    """Backend message: every socket of ``username`` closes with 4001, in every process."""
    return json.dumps({"type": "user_sessions_ended", "username": username})


def user_removed_message(username: str) -> str:
    """Backend message: the account was deleted; every process closes its sockets and drops
    it from the list (clients get ``{"type": "removed"}``)."""
    return json.dumps({"type": "user_removed", "username": username})


class Revocations:
    """Closes the sockets of ended sessions; ``unregister`` is presence's ``remove``."""

    def __init__(
        self,
        broker: Backend,
        accounts: AccountService,
        sockets: LocalSockets,
        unregister: Callable[[Connection], None],
    ) -> None:
        self.broker = broker
        self.accounts = accounts
        self._sockets = sockets
        self._unregister = unregister
        self._unannounced: dict[str, None] = {}  # insertion-ordered set of messages

    def __len__(self) -> int:
        """Revocations not yet told to the other processes (the broker was down)."""
        return len(self._unannounced)

    async def end_session(self, session_id: str) -> None:
        self.close_session(session_id)
        await self._announce(session_ended_message(session_id))

    async def end_user_sessions(self, username: str) -> None:
        self.close_user(username)
        await self._announce(user_sessions_ended_message(username))

    def close_session(self, session_id: str) -> None:
        self.accounts.forget(session_id)
        self._close(self._sockets.of_session(session_id))

    def close_user(self, username: str) -> None:
        """Every socket of ``username`` in any case (names are unique regardless of case)."""
        self.accounts.forget_user(username)
        self._close(self._sockets.of_user(username))

    def _close(self, conns: list[Connection]) -> None:
        for conn in conns:
            self._unregister(conn)
            conn.close(CLOSE_SESSION_ENDED, "session ended")

    def close_expired(self, now: dt.datetime) -> int:
        ended = self._sockets.expired(now)
        for session_id in ended:
            log.info("Session %s... expired; closing its sockets", session_id[:8])
            self.close_session(session_id)
        return len(ended)

    async def recheck_sessions(self) -> int:
        sessions = self._sockets.sessions()
        if not sessions:
            return 0
        live = await self.accounts.live_sessions(sessions)
        gone = [sid for sid in sessions if sid not in live and self._sockets.has_session(sid)]
        for session_id in gone:
            self.close_session(session_id)
        if gone:
            log.info("Closed the sockets of %d session(s) revoked or expired meanwhile", len(gone))
        return len(gone)

    async def _announce(self, message: str) -> None:
        """Publish ``message``; if the broker is down, keep it for ``announce_again``."""
        try:
            await self.broker.publish(message)
        except Exception as exc:
            log.warning(
                "Could not announce a revocation to other processes now (%s); "
                "will announce it when the broker is back",
                exc,
            )
            self._unannounced[message] = None
            if len(self._unannounced) > MAX_UNANNOUNCED:
                del self._unannounced[next(iter(self._unannounced))]

    async def announce_again(self) -> None:
        """Publish again the revocations whose announcement failed (in their order); what
        still fails stays for the next try (the error is raised)."""
        sent = 0
        try:
            while self._unannounced:
                message = next(iter(self._unannounced))
                await self.broker.publish(message)  # raises: the rest waits for the next try
                self._unannounced.pop(message, None)
                sent += 1
        finally:
            if sent:
                log.info("Announced %d revocation(s) made while the broker was down", sent)
