"""The sign-up, login and logout use cases of the web pages: one call each.

A handler reads the form, calls ``register``, ``login`` or ``logout``, and sets (or clears)
the cookie;
what the user can fix comes back as a typed error (``errors.py``), which the web layer turns
into a status and the form again. Everything between is here: the field limits, the one
bcrypt of a sign-up, the failed-login throttle, the session rotation (``replaces``) and the
closing of the replaced session's sockets in every process.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import NamedTuple, Protocol

from presence_app.accounts.errors import InvalidCredentials, LoginThrottled
from presence_app.accounts.fields import check_input, clip_username, within_input_limit
from presence_app.accounts.service import AccountService, NewSession, SessionUser
from presence_app.backends.throttle import Throttle
from presence_app.db.database import DatabaseWriteError

log = logging.getLogger(__name__)
#: Pauses between the attempts of a logout whose database write fails (lock contention, a
#: full disk): then ``DatabaseWriteError``, and the session stays valid.
LOGOUT_RETRIES = (0.1, 0.4)


class SessionEvents(Protocol):
    """What sign-up and login tell live presence (``PresenceService`` is one)."""

    async def end_session(self, session_id: str) -> None:
        """Close the sockets of a revoked session in every process."""

    async def user_signed_up(self, username: str) -> None:
        """Show a new account to every client."""


class SignedIn(NamedTuple):
    """A new session: who it is for, and the token for the session cookie."""

    user: SessionUser
    token: str


class AuthService:
    """``throttle`` counts failed logins per (name, address): in memory for one process, in
    Redis for a deployment (``services.make_throttle``)."""

    def __init__(self, accounts: AccountService, throttle: Throttle, events: SessionEvents) -> None:
        self.accounts = accounts
        self.throttle = throttle
        self.events = events

    async def register(
        self, username: str, password: str, confirm: str, replaces: str | None = None
    ) -> SignedIn:
        """A new account, logged in: one bcrypt, and the account and its session written
        together. ``replaces``: the session token the browser presented (revoked, as at
        login). Raises ``FieldTooLong``, ``InvalidUsername``, ``PasswordTooShort``,
        ``PasswordTooLong``, ``PasswordHasNul``, ``PasswordMismatch`` or ``UsernameTaken``."""
        check_input(username, password, confirm)
        created = await self.accounts.create_user_with_session(
            username, password, confirm, replaces
        )
        log.info("New account %s", username)
        await self._rotated(created)
        await self.events.user_signed_up(username)
        return SignedIn(created.user, created.token)

    async def login(
        self, username: str, password: str, address: str, replaces: str | None = None
    ) -> SignedIn:
        """A new session if the password is right, from ``address`` (the client's); the
        session of ``replaces`` (the token presented) is revoked and its sockets closed
        everywhere. Raises ``LoginThrottled`` (even for the right password) or
        ``InvalidCredentials`` (one answer for every failure)."""
        name = clip_username(username)
        wait = await self.throttle.reserve(name, address)  # simultaneous guesses wait
        if wait > 0:
            raise LoginThrottled(max(math.ceil(wait), 1))
        user: SessionUser | None = None
        ok: bool | None = None  # None: no check happened (an error), counted neither way
        try:  # over-long fields are failures too, without a bcrypt check
            if within_input_limit(username, password):
                user = await self.accounts.authenticate(username, password)
            ok = user is not None
        finally:
            await self.throttle.release(name, address, ok)
        if user is None:
            log.info("Failed login for %r from %s", name, address)
            raise InvalidCredentials()
        # Rotation: a fresh token on every login; the one presented before is revoked, and
        # its sockets are closed in every process, as at logout.
        opened = await self.accounts.open_session(user, replaces)
        await self._rotated(opened)
        return SignedIn(opened.user, opened.token)

    async def logout(self, token: str) -> None:
        """End the session of ``token`` and close its sockets in every process. A database
        that cannot write is retried (``LOGOUT_RETRIES``); if it still cannot, this raises
        ``DatabaseWriteError`` and the session stays valid (never a silent failure)."""
        for attempt, delay in enumerate((*LOGOUT_RETRIES, None), start=1):
            try:
                session_id = await self.accounts.end_session(token)
                break
            except DatabaseWriteError as exc:
                if delay is None:
                    log.warning("Logout failed after %d attempts: %s", attempt, exc)
                    raise
                log.warning("Logout could not delete the session; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
        await self.events.end_session(session_id)

    async def _rotated(self, opened: NewSession) -> None:
        if opened.revoked:  # the browser's earlier session: its sockets close everywhere
            await self.events.end_session(opened.revoked)
