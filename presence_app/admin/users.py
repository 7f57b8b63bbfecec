"""Operator use cases behind ``presence users ...``: list, show, add, disable, enable, delete,
reset a password, revoke sessions.

They run in a process of their own (the admin command), against the configured database.
Running servers learn of them through the broker: ``user_sessions_ended`` closes the user's
sockets with 4001 in every process, ``user_removed`` also drops a deleted account from every
list (clients get ``{"type": "removed"}``), and a new account is announced like a sign-up.
With the in-process broker (no Redis) nothing reaches another process: a running server finds
out from the database within ``sync.DATABASE_CHECK_INTERVAL`` seconds instead.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update

from presence_app.accounts.errors import InvalidUsername
from presence_app.accounts.fields import check_new_password, check_username
from presence_app.accounts.service import AccountService
from presence_app.backends.base import Backend
from presence_app.db.database import Database, Session, User, aware, utcnow
from presence_app.live.presence import user_removed_message, user_sessions_ended_message


class UserNotFound(Exception):
    """No account has this name (names are compared without case)."""

    def __init__(self, username: str) -> None:
        super().__init__(f"no user named {username!r}")
        self.username = username


@dataclass(frozen=True)
class UserInfo:
    username: str
    created_at: dt.datetime | None
    last_seen: dt.datetime | None
    disabled_at: dt.datetime | None
    sessions: int  # live (unexpired) sessions


class UserAdmin:
    """One database unit of work per use case, then one backend message for running servers.

    Through ``backend`` a new account is announced and a deleted one forgotten too (with the
    in-process backend nobody else hears of it: servers find out from the database).
    """

    def __init__(self, db: Database, accounts: AccountService, backend: Backend) -> None:
        self.db = db
        self.accounts = accounts
        self.backend = backend

    async def all(self) -> list[UserInfo]:
        return await self._select(None)

    async def show(self, username: str) -> UserInfo:
        found = await self._select(username)
        if not found:
            raise UserNotFound(username)
        return found[0]

    async def _select(self, username: str | None) -> list[UserInfo]:
        live = (
            select(Session.user_id, func.count().label("n"))
            .where(Session.expires_at > utcnow())
            .group_by(Session.user_id)
            .subquery()
        )
        query = (
            select(
                User.username,
                User.created_at,
                User.last_seen,
                User.disabled_at,
                func.coalesce(live.c.n, 0).label("sessions"),
            )
            .outerjoin(live, live.c.user_id == User.id)
            .order_by(func.lower(User.username))
        )
        if username is not None:
            query = query.where(User.username_key == username.lower())
        async with self.db.read() as session:
            rows = (await session.execute(query)).all()
        return [
            UserInfo(
                r.username,
                aware(r.created_at),
                aware(r.last_seen),
                aware(r.disabled_at),
                int(r.sessions),
            )
            for r in rows
        ]

    async def add(self, username: str, password: str) -> str:
        """Create an account (the sign-up rules apply: an ``AccountError`` otherwise)."""
        record = await self.accounts.create_user(username, password, password)
        await self.backend.announce(record.username)  # appears live, as after a sign-up
        return record.username

    async def set_disabled(self, username: str, disabled: bool) -> str:
        """Disable (no login, every session ended) or enable an account; its stored name."""
        name = await self._update(username, disabled_at=utcnow() if disabled else None)
        if disabled:
            await self.revoke_sessions(name)
        return name

    async def reset_password(self, username: str, password: str) -> str:
        """A new password (the sign-up rules apply); every session of the account ends."""
        check_new_password(password, password)
        hashed = await self.accounts.hasher.hash(password)
        name = await self._update(username, password_hash=hashed)
        await self.revoke_sessions(name)
        return name

    async def revoke_sessions(self, username: str) -> int:
        """End every session of the account; their sockets close with 4001 everywhere."""
        name = await self._stored_name(username)
        count = await self.accounts.end_user_sessions(name)
        await self.backend.publish(user_sessions_ended_message(name))
        return count

    async def delete(self, username: str) -> str:
        """Delete the account, its sessions and presence rows (foreign keys cascade); every
        running server closes its sockets and drops it from every list."""
        name = await self._stored_name(username)
        async with self.db.write() as session:
            await session.execute(delete(User).where(User.username_key == name.lower()))
        await self.backend.publish(user_removed_message(name))
        await self.backend.forget(name)  # nobody held it; else its holder forgets it
        return name

    async def _stored_name(self, username: str) -> str:
        check_username_or_missing(username)
        async with self.db.read() as session:
            name = await session.scalar(
                select(User.username).where(User.username_key == username.lower())
            )
        if name is None:
            raise UserNotFound(username)
        return str(name)

    async def _update(self, username: str, **values: object) -> str:
        check_username_or_missing(username)
        async with self.db.write() as session:
            name = await session.scalar(
                update(User)
                .where(User.username_key == username.lower())
                .values(**values)
                .returning(User.username)
            )
        if name is None:
            raise UserNotFound(username)
        return str(name)


def check_username_or_missing(username: str) -> None:
    """A name no account can have is simply not found (no query needed)."""
    try:
        check_username(username)
    except InvalidUsername:
        raise UserNotFound(username) from None
