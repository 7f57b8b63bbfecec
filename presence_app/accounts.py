"""Accounts and server-side sessions: sign-up, login, opaque revocable session tokens."""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from presence_app.db import Database, Session, User, aware, utcnow
from presence_app.passwords import MAX_PASSWORD_BYTES, PasswordHasher

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
MIN_PASSWORD_CHARS = 8
LOGIN_FAILED = "Wrong username or password."
SESSION_CACHE_SECONDS = 2.0
#: Session lookups that wait together are answered by one query of at most this many tokens.
SESSION_BATCH = 500


class AccountError(Exception):
    """A sign-up or login problem the user can fix; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SessionUser:
    """Who a session cookie belongs to. ``session_id`` is the stored token hash."""
    user_id: int
    username: str
    session_id: str


@dataclass(frozen=True)
class UserRecord:
    username: str
    last_seen: dt.datetime | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_username(username: str) -> str:
    if not USERNAME_RE.fullmatch(username):  # match() lets "name\n" through
        raise AccountError(400, "Usernames are 3-32 characters: letters, digits, _ . or -.")
    return username


def check_new_password(password: str, confirm: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(400, f"Passwords need at least {MIN_PASSWORD_CHARS} characters.")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise AccountError(400, f"Passwords can be at most {MAX_PASSWORD_BYTES} bytes long.")
    if "\x00" in password:
        raise AccountError(400, "Passwords cannot contain NUL characters.")
    if password != confirm:
        raise AccountError(400, "The two passwords do not match.")
    return password


class AccountService:
    """Every account and session operation; one database unit of work per call."""

    def __init__(self, db: Database, hasher: PasswordHasher, session_days: float) -> None:
        self.db = db
        self.hasher = hasher
        self.session_lifetime = dt.timedelta(days=session_days)
        # token hash -> (user, monotonic expiry): 10,000 sockets of one session cost one query.
        self._cache: dict[str, tuple[SessionUser, float]] = {}
        self._inflight: dict[str, asyncio.Future[SessionUser | None]] = {}
        self._wanted: dict[str, asyncio.Future[SessionUser | None]] = {}  # next batch
        self._loading: asyncio.Task[None] | None = None
        self._revoked: dict[str, float] = {}  # token hash -> until when lookups must not cache

    async def signup(self, username: str, password: str, confirm: str) -> UserRecord:
        check_username(username)
        check_new_password(password, confirm)
        key = username.lower()
        async with self.db.read() as session:
            taken = await session.scalar(select(User.id).where(User.username_key == key))
        if taken is not None:
            raise AccountError(409, "That username is taken.")
        hashed = await self.hasher.hash(password)
        try:
            async with self.db.write() as session:
                session.add(User(username=username, username_key=key, password_hash=hashed))
        except IntegrityError:  # a simultaneous sign-up of the same name won the race
            raise AccountError(409, "That username is taken.") from None
        return UserRecord(username, None)

    async def authenticate(self, username: str, password: str) -> SessionUser | None:
        """The user if the password matches, else None (same work either way)."""
        user = None
        if len(username) <= 64:
            async with self.db.read() as session:
                user = await session.scalar(
                    select(User).where(User.username_key == username.lower()))
        ok = await self.hasher.check(password, user.password_hash if user else None)
        if not ok or user is None:
            return None
        return SessionUser(user.id, user.username, "")

    async def start_session(self, user: SessionUser, replaces: str | None = None) -> str:
        """A new random token for ``user``; ``replaces`` (an old token) is revoked: rotation."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        async with self.db.write() as session:
            if replaces:
                await session.execute(delete(Session).where(
                    Session.token_hash == token_hash(replaces)))
            session.add(Session(token_hash=token_hash(token), user_id=user.user_id,
                                created_at=now, expires_at=now + self.session_lifetime))
        if replaces:
            self.forget(token_hash(replaces))
        return token

    async def session_user(self, token: str | None) -> SessionUser | None:
        if not token:
            return None
        key = token_hash(token)
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
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
        async with self.db.read() as session:
            rows = (await session.execute(
                select(Session.token_hash, User.id, User.username, Session.expires_at)
                .join(Session, Session.user_id == User.id)
                .where(Session.token_hash.in_(keys)))).all()
        now, found = utcnow(), {}
        for row in rows:
            key = row.token_hash
            if (aware(row.expires_at) or now) <= now:
                continue
            if self._revoked.get(key, 0.0) > time.monotonic():
                continue  # logged out while this lookup was running
            found[key] = user = SessionUser(row.id, row.username, key)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (user, time.monotonic() + SESSION_CACHE_SECONDS)
        for key in keys:
            if key not in found:
                self._cache.pop(key, None)
        return found

    async def end_session(self, token: str) -> str:
        """Delete the session server-side; returns its id so its sockets can be closed."""
        key = token_hash(token)
        async with self.db.write() as session:
            await session.execute(delete(Session).where(Session.token_hash == key))
        self.forget(key)
        return key

    def forget(self, session_id: str) -> None:
        """Drop a cached session (called for logouts in any process)."""
        self._cache.pop(session_id, None)
        now = time.monotonic()
        if len(self._revoked) > 10_000:
            self._revoked = {k: t for k, t in self._revoked.items() if t > now}
        self._revoked[session_id] = now + SESSION_CACHE_SECONDS

    async def purge_expired_sessions(self) -> int:
        async with self.db.write() as session:
            result = await session.execute(delete(Session).where(Session.expires_at <= utcnow()))
        return int(getattr(result, "rowcount", 0) or 0)

    async def all_users(self) -> list[UserRecord]:
        async with self.db.read() as session:
            rows = (await session.execute(
                select(User.username, User.last_seen).order_by(func.lower(User.username)))).all()
        return [UserRecord(r.username, aware(r.last_seen)) for r in rows]


def _retrieve(future: asyncio.Future[SessionUser | None]) -> None:
    """Mark a lookup's failure as seen: its waiter may have gone (a cancelled handshake)."""
    if not future.cancelled():
        future.exception()
