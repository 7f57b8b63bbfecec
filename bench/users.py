"""Many distinct accounts, each with one session, created in seconds before a measured phase.

Sign-up and login over HTTP cost a bcrypt hash and several requests per account (minutes for
10,000), so the benchmark writes accounts and sessions straight into the run's database
through the app's own models (``presence_app.db.database``) and token scheme
(``presence_app.accounts.service.token_hash``: the table keeps the sha256 of the token), and signs
each cookie value like the app does (Tornado's ``create_signed_value`` with the cookie
secret the runner passes with ``--cookie-secret``). The app is started afterwards, so it
loads every account as offline. Works for SQLite and PostgreSQL; with Redis nothing is
needed (presence state starts empty).

Every account gets the same bcrypt hash (cost 4) of ``PASSWORD``, so a seeded user can also
log in through the form.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import bcrypt
from sqlalchemy import insert
from tornado.web import create_signed_value

from presence_app.accounts.service import token_hash
from presence_app.db.database import Database, Session, User

PASSWORD = "bench-password"
SESSION_COOKIE = "presence_session"  # handlers.base.SESSION_COOKIE (bench never imports handlers)
CHUNK = 2000


def usernames(prefix: str, count: int) -> list[str]:
    """``u00000``, ``u00001``, ...: short names, valid for the app, sorted as created."""
    width = max(len(str(max(count - 1, 0))), 5)
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def session_cookie(secret: str, token: str) -> str:
    """The ``Cookie`` header value the app accepts for ``token``."""
    value = create_signed_value(secret, SESSION_COOKIE, token).decode("ascii")
    return f"{SESSION_COOKIE}={value}"


async def seed(
    database_url: str, secret: str, names: list[str], session_days: float = 30.0
) -> dict[str, str]:
    """Create the schema (as the app would), the accounts and one session per account.

    Returns username -> ``Cookie`` header value."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode("ascii")
    now = dt.datetime.now(dt.UTC)
    expires = now + dt.timedelta(days=session_days)
    db = Database(database_url)
    cookies: dict[str, str] = {}
    try:
        await db.create_schema()
        for start in range(0, len(names), CHUNK):
            chunk = names[start : start + CHUNK]
            rows: list[dict[str, Any]] = [
                {
                    "username": name,
                    "username_key": name.lower(),
                    "password_hash": hashed,
                    "created_at": now,
                    "last_seen": None,
                }
                for name in chunk
            ]
            async with db.write() as session:
                ids = (
                    await session.execute(insert(User).returning(User.id, User.username), rows)
                ).all()
                tokens = {name: secrets.token_urlsafe(32) for name in chunk}
                await session.execute(
                    insert(Session),
                    [
                        {
                            "token_hash": token_hash(tokens[username]),
                            "user_id": user_id,
                            "created_at": now,
                            "expires_at": expires,
                        }
                        for user_id, username in ids
                    ],
                )
            for name, token in tokens.items():
                cookies[name] = session_cookie(secret, token)
    finally:
        await db.close()
    return cookies


class Seeder:
    """The ``seed`` hook of ``AppDeployment``: seeds ``names`` and keeps their cookies."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.cookies: dict[str, str] = {}

    async def __call__(self, database_url: str, secret: str) -> None:
        self.cookies = await seed(database_url, secret, self.names)

    def headers(self, names: list[str]) -> list[dict[str, str]]:
        return [{"Cookie": self.cookies[name]} for name in names]
