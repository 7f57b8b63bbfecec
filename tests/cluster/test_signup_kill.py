"""kill -9 in the middle of a storm of sign-ups leaves no half-created account."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import Any

import bcrypt
import pytest
from sqlalchemy import select
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from presence_app.client import ClientError, PresenceClient
from presence_app.db.database import Database, Session, User
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.cluster

SIGNUPS = 160
IN_FLIGHT = 40
BCRYPT_HASH = re.compile(r"^\$2[aby]\$08\$[./A-Za-z0-9]{53}$")


def password_of(name: str) -> str:
    return f"pw-{name}-secret"


async def accounts(database_url: str) -> tuple[dict[str, Any], set[int]]:
    """Users by name (id, key, hash) and the user ids that sessions point at."""
    db = Database(database_url)
    try:
        async with db.read() as session:
            users = {
                u.username: (u.id, u.username_key, u.password_hash)
                for u in (await session.scalars(select(User))).all()
            }
            session_users = set((await session.scalars(select(Session.user_id))).all())
        return users, session_users
    finally:
        await db.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_kill_during_signups_leaves_only_complete_accounts(
    request: Any, database: str, start_app: Any, prefix: str
) -> None:
    database_url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url")
    # Cost 8 (not 4): each sign-up takes long enough that the kill lands mid-way.
    app = start_app("node-a", database_url, REDIS_URL, prefix, "--bcrypt-rounds", "8")
    names = [f"user{i:03d}" for i in range(SIGNUPS)]
    answered: dict[str, int] = {}

    async def storm() -> None:
        clients = {}
        for name in names:
            clients[name] = PresenceClient(app.url)
            await clients[name].xsrf()
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def signup(name: str) -> None:
            async with gate:
                try:
                    response = await clients[name].signup(name, password_of(name), check=False)
                    answered[name] = response.code
                except (ClientError, HTTPClientError, OSError):
                    pass  # no answer: the process died under it

        tasks = [asyncio.ensure_future(signup(name)) for name in names]
        deadline = time.monotonic() + 30
        while len(answered) < SIGNUPS // 3:
            assert time.monotonic() < deadline, f"only {len(answered)} sign-ups answered"
            await asyncio.sleep(0.01)
        assert app.proc is not None
        app.proc.send_signal(signal.SIGKILL)
        await asyncio.gather(*tasks)

    AsyncHTTPClient.configure(None, max_clients=IN_FLIGHT)
    try:
        asyncio.run(storm())
    finally:
        AsyncHTTPClient.configure(None)
    created = {n for n, code in answered.items() if code == 302}
    assert set(answered.values()) <= {302}, answered
    assert len(created) < SIGNUPS, "every sign-up finished before the kill: nothing tested"

    app.start()  # same node id, same database

    async def check() -> None:
        users, session_users = await accounts(database_url)
        assert created <= set(users), "a sign-up answered 302 was lost"
        for name, (_id, key, hashed) in users.items():
            assert name in names and key == name.lower()
            assert BCRYPT_HASH.match(hashed), f"{name}: not a bcrypt hash: {hashed!r}"
            assert await asyncio.to_thread(
                bcrypt.checkpw, password_of(name).encode(), hashed.encode()
            ), f"{name}: wrong hash"
        assert session_users <= {uid for uid, _key, _hash in users.values()}, (
            "a session points at no account"
        )
        # Every account works: it can log in, and the live list shows every one of them.
        gate = asyncio.Semaphore(8)

        async def login(name: str) -> PresenceClient:
            async with gate:
                client = PresenceClient(app.url)
                await client.login(name, password_of(name))
                return client

        clients = await asyncio.gather(*(login(name) for name in users))
        listed = {u["username"] for u in await clients[0].users()} if clients else set()
        assert listed == set(users)
        print(
            f"\nkill -9 after {len(created)} of {SIGNUPS} sign-ups answered; "
            f"{len(users)} complete accounts, {len(users) - len(created)} of them "
            "created but never answered"
        )

    asyncio.run(check())
