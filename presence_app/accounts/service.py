"""Accounts and server-side sessions: the stored accounts, password checks, opaque revocable
session tokens and their cache. The sign-up and login use cases are in ``auth.py``."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from presence_app.accounts.errors import UsernameTaken
from presence_app.accounts.fields import check_new_password, check_username, possible_username
from presence_app.accounts.passwords import PasswordHasher
from presence_app.db.database import Database, Session, User, aware, utcnow

SESSION_CACHE_SECONDS = 2.0
#: Session lookups that wait together are answered by one query of at most this many tokens.
SESSION_BATCH = 500
#: Sessions, users revoked and remembered so that a lookup already running cannot resurrect
#: them in the cache; past this many, the oldest are forgotten.
MAX_REVOKED = 10_000


@dataclass(frozen=True)
class SessionUser:
    """Who a session cookie belongs to. ``session_id`` is the stored token hash;
    ``expires_at`` (UTC) is kept with each socket so it can be closed when the session ends."""

    user_id: int
    username: str
    session_id: str
    expires_at: dt.datetime | None = None


@dataclass(frozen=True)
class NewSession:
    """A session just created: the cookie ``token``, and the session it replaced (rotation),
    whose sockets must now be closed everywhere, if there was one."""

    user: SessionUser
    token: str
    revoked: str | None = None


@dataclass(frozen=True)
class UserRecord:
    username: str
    last_seen: dt.datetime | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class AccountService:
    """Every account and session operation; one database unit of work per call.

    Session lookups are cached for up to ``SESSION_CACHE_SECONDS`` (10,000 sockets of one
    session cost one query), but a cached session never outlives its revocation on any
    process: the broker's ``session_ended`` evicts it (``forget``); while the broker is not
    healthy (such messages may be lost) the cache is bypassed (``guard_cache``); after a
    resubscribe it is cleared (``clear_cache``); and an entry never outlives the session's
    ``expires_at``.
    """

    def __init__(self, db: Database, hasher: PasswordHasher, session_days: float) -> None:
        self.db = db
        self.hasher = hasher
        self.session_lifetime = dt.timedelta(days=session_days)
        # token hash -> (user, monotonic expiry): 10,000 sockets of one session cost one query.
        self._cache: dict[str, tuple[SessionUser, float]] = {}
        self._generation = 0  # bumped by clear_cache: lookups running across it do not cache
        self._cache_usable: Callable[[], bool] = _always
        self._inflight: dict[str, asyncio.Future[SessionUser | None]] = {}
        self._wanted: dict[str, asyncio.Future[SessionUser | None]] = {}  # next batch
        self._loading: asyncio.Task[None] | None = None
        # Revoked token hashes (a token never comes back) and users (monotonic time of the
        # revocation): a lookup that was already running must not hand them out again.
        self._revoked: dict[str, None] = {}
        self._revoked_users: dict[str, float] = {}

    # -- the session cache --------------------------------------------------------------------
    def guard_cache(self, usable: Callable[[], bool]) -> None:
        """Serve cached sessions only while ``usable()``: the broker that carries revocations
        between processes is healthy. Otherwise every lookup goes to the database."""
        self._cache_usable = usable

    def clear_cache(self) -> None:
        """Forget every cached session: revocations may have been missed (a resubscribe)."""
        self._cache.clear()
        self._generation += 1

    def forget(self, session_id: str) -> None:
        """Drop a revoked session from the cache, for good (logouts in any process)."""
        self._cache.pop(session_id, None)
        self._revoked[session_id] = None
        if len(self._revoked) > MAX_REVOKED:
            del self._revoked[next(iter(self._revoked))]

    def forget_user(self, username: str) -> None:
        """Drop every cached session of ``username`` (all of their sessions were revoked)."""
        key = username.lower()
        for token, (user, _) in list(self._cache.items()):
            if user.username.lower() == key:
                del self._cache[token]
        self._revoked_users.pop(key, None)
        self._revoked_users[key] = time.monotonic()
        if len(self._revoked_users) > MAX_REVOKED:
            del self._revoked_users[next(iter(self._revoked_users))]

    def revoked(self, session_id: str) -> bool:
        """Whether this process has seen ``session_id`` revoked (a socket whose handshake
        raced the revocation must not stay open)."""
        return session_id in self._revoked

    # -- accounts, passwords, sessions -----------------------------------------------------
    async def _new_account(self, username: str, password: str, confirm: str) -> User:
        """A checked, hashed, not yet written account (the one bcrypt of a sign-up)."""
        check_username(username)
        check_new_password(password, confirm)
        key = username.lower()
        async with self.db.read() as session:
            taken = await session.scalar(select(User.id).where(User.username_key == key))
        if taken is not None:
            raise UsernameTaken()
        hashed = await self.hasher.hash(password)
        return User(username=username, username_key=key, password_hash=hashed)

    async def create_user(self, username: str, password: str, confirm: str) -> UserRecord:
        """An account without a session (``presence users add``)."""
        user = await self._new_account(username, password, confirm)
        try:
            async with self.db.write() as session:
                session.add(user)
        except IntegrityError:  # a simultaneous sign-up of the same name won the race
            raise UsernameTaken() from None
        return UserRecord(username, None)

    async def create_user_with_session(
        self, username: str, password: str, confirm: str, replaces: str | None = None
    ) -> NewSession:
        """An account and its first session in one write transaction: both exist or neither.
        ``replaces`` (the token the browser presented) is revoked, as at login."""
        user = await self._new_account(username, password, confirm)
        token = secrets.token_urlsafe(32)
        try:
            async with self.db.write() as session:
                session.add(user)
                await session.flush()  # assigns user.id for the session row
                revoked = await self._delete_session(session, replaces)
                expires = self._add_session(session, user.id, token)
        except IntegrityError:  # a simultaneous sign-up of the same name won the race
            raise UsernameTaken() from None
        if revoked:
            self.forget(revoked)
        return NewSession(
            SessionUser(user.id, username, token_hash(token), expires), token, revoked
        )

    async def authenticate(self, username: str, password: str) -> SessionUser | None:
        """The user if the password matches, else None (the same bcrypt work either way)."""
        user = None
        if possible_username(username):
            async with self.db.read() as session:
                user = await session.scalar(
                    select(User).where(User.username_key == username.lower())
                )
        ok = await self.hasher.check(password, user.password_hash if user else None)
        # A disabled account fails like a wrong password, after the same bcrypt: the login
        # page must not tell anyone which names exist (see README, "Admin commands").
        if not ok or user is None or user.disabled_at is not None:
            return None
        return SessionUser(user.id, user.username, "")

    async def open_session(self, user: SessionUser, replaces: str | None = None) -> NewSession:
        """A new random token for ``user``; ``replaces`` (an old token) is revoked in the same
        transaction (rotation). ``revoked`` says which session's sockets must be closed."""
        token = secrets.token_urlsafe(32)
        async with self.db.write() as session:
            revoked = await self._delete_session(session, replaces)
            expires = self._add_session(session, user.user_id, token)
        if revoked:
            self.forget(revoked)
        return NewSession(
            SessionUser(user.user_id, user.username, token_hash(token), expires), token, revoked
        )

    def _add_session(self, session: AsyncSession, user_id: int, token: str) -> dt.datetime:
        now = utcnow()
        expires = now + self.session_lifetime
        session.add(
            Session(
                token_hash=token_hash(token), user_id=user_id, created_at=now, expires_at=expires
            )
        )
        return expires

    async def _delete_session(self, session: AsyncSession, token: str | None) -> str | None:
        """Delete the session of ``token``; its id if it existed."""
        if not token:
            return None
        key = token_hash(token)
        result = await session.execute(delete(Session).where(Session.token_hash == key))
        return key if getattr(result, "rowcount", 0) else None

    async def session_user(self, token: str | None) -> SessionUser | None:
        if not token:
            return None
        key = token_hash(token)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic() and self._cache_usable():
            return cached[0]
        # One lookup per token however many handshakes miss the cache at once (10,000
        # sockets of one session), and one query for the tokens that wait together (10,000
        # different users reconnecting after a restart): while a query runs, the next
        # batch gathers.
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self._inflight[key] = self._wanted[key] = future
            if self._loading is None:
                self._loading = asyncio.ensure_future(self._load_batches())
        return await asyncio.shield(future)

    async def _load_batches(self) -> None:
        try:
            while self._wanted:
                await asyncio.sleep(0)  # let the handshakes of this moment join the batch
                keys = list(self._wanted)[:SESSION_BATCH]
                batch = {key: self._wanted.pop(key) for key in keys}
                try:
                    found = await self._load_sessions(keys)
                except Exception as exc:
                    for key, future in batch.items():
                        self._inflight.pop(key, None)
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for key, future in batch.items():
                    self._inflight.pop(key, None)
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            self._loading = None

    async def _load_sessions(self, keys: list[str]) -> dict[str, SessionUser]:
        started, generation = time.monotonic(), self._generation
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(Session.token_hash, User.id, User.username, Session.expires_at)
                    .join(Session, Session.user_id == User.id)
                    .where(Session.token_hash.in_(keys), User.disabled_at.is_(None))
                )
            ).all()
        # Cache only what no revocation can have overtaken: the broker was healthy all along
        # and the cache was not cleared meanwhile.
        cache = generation == self._generation and self._cache_usable()
        now, mono, found = utcnow(), time.monotonic(), {}
        for row in rows:
            key, expires = row.token_hash, aware(row.expires_at) or now
            if expires <= now:
                continue
            if (
                key in self._revoked
                or self._revoked_users.get(row.username.lower(), -1.0) >= started
            ):
                continue  # revoked while this lookup was running
            found[key] = user = SessionUser(row.id, row.username, key, expires)
            if cache:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                left = (expires - now).total_seconds()
                self._cache[key] = (user, mono + min(SESSION_CACHE_SECONDS, left))
        for key in keys:
            if key not in found:
                self._cache.pop(key, None)
        return found

    async def live_sessions(self, session_ids: Iterable[str]) -> set[str]:
        """Which of ``session_ids`` still exist and have not expired (``SESSION_BATCH`` ids
        per query): the re-check of open sockets after a resync."""
        ids, now = list(session_ids), utcnow()
        live: set[str] = set()
        for start in range(0, len(ids), SESSION_BATCH):
            async with self.db.read() as session:
                rows = (
                    await session.execute(
                        select(Session.token_hash, Session.expires_at)
                        .join(User, Session.user_id == User.id)
                        .where(
                            Session.token_hash.in_(ids[start : start + SESSION_BATCH]),
                            User.disabled_at.is_(None),
                        )
                    )
                ).all()
            live.update(r.token_hash for r in rows if (aware(r.expires_at) or now) > now)
        return live

    async def end_session(self, token: str) -> str:
        """Delete the session server-side; returns its id so its sockets can be closed."""
        key = token_hash(token)
        async with self.db.write() as session:
            await session.execute(delete(Session).where(Session.token_hash == key))
        self.forget(key)
        return key

    async def end_user_sessions(self, username: str) -> int:
        """Delete every session of ``username`` (an admin revocation); how many there were.
        Their sockets are closed by ``PresenceService.end_user_sessions``."""
        user_id = select(User.id).where(User.username_key == username.lower())
        async with self.db.write() as session:
            result = await session.execute(
                delete(Session).where(Session.user_id.in_(user_id.scalar_subquery()))
            )
        self.forget_user(username)
        return int(getattr(result, "rowcount", 0) or 0)

    async def purge_expired_sessions(self) -> int:
        async with self.db.write() as session:
            result = await session.execute(delete(Session).where(Session.expires_at <= utcnow()))
        return int(getattr(result, "rowcount", 0) or 0)

    async def all_users(self) -> list[UserRecord]:
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(User.username, User.last_seen).order_by(func.lower(User.username))
                )
            ).all()
        return [UserRecord(r.username, aware(r.last_seen)) for r in rows]


def _always() -> bool:
    return True


def _retrieve(future: asyncio.Future[SessionUser | None]) -> None:
    """Mark a lookup's failure as seen: its waiter may have gone (a cancelled handshake)."""
    if not future.cancelled():
        future.exception()
