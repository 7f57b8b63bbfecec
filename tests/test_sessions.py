"""Passwords are taken verbatim; expired sessions are purged; the secret file is logged."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import asyncio

import tornado.web
from sqlalchemy import event, func, select, update

from presence_app.db import Session

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gen_test
async def test_passwords_keep_their_spaces(make_client: Any) -> None:
    owner = make_client()
    assert (await owner.signup("spacey", "  two spaces  ")).code == 302
    trimmed = make_client()
    assert (await trimmed.login("spacey", "two spaces", check=False)).code == 401
    exact = make_client()
    assert (await exact.login("spacey", "  two spaces  ", check=False)).code == 302


@pytest.mark.gen_test
async def test_expired_sessions_are_purged(services: Any, user_factory: Any) -> None:
    await user_factory("alice")
    await user_factory("bob")
    async with services.db.write() as session:
        await session.execute(update(Session).where(Session.user_id == 1).values(
            expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)))
    await services.sync.purge_sessions()
    async with services.db.read() as session:
        left = await session.scalar(select(func.count()).select_from(Session))
    assert left == 1


def test_generating_the_cookie_secret_is_logged(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys, run; sys.exit(run.main(sys.argv[1:]))",
         "--port", "0", "--data-dir", str(tmp_path),
         "--database-url", "postgresql://nobody@127.0.0.1:1/none"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    # The database is unreachable, but only after the secret was generated and logged.
    assert result.returncode == 2
    assert "Generated a new cookie secret" in result.stderr
    assert (tmp_path / "cookie_secret").stat().st_mode & 0o777 == 0o600


@pytest.mark.gen_test
async def test_concurrent_lookups_of_one_session_share_one_query(services: Any,
                                                                 user_factory: Any) -> None:
    alice = await user_factory("alice")
    token = tornado.web.decode_signed_value(
        services.settings.cookie_secret, "presence_session",
        alice.cookies["presence_session"]).decode()
    services.accounts._cache.clear()
    queries = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal queries
        queries += "sessions" in statement

    event.listen(services.db.engine.sync_engine, "before_cursor_execute", count)
    try:
        found = await asyncio.gather(*(services.accounts.session_user(token)
                                       for _ in range(50)))
    finally:
        event.remove(services.db.engine.sync_engine, "before_cursor_execute", count)
    assert {user.username for user in found} == {"alice"}
    assert queries == 1
    # A logout while a lookup runs is not undone by that lookup's result.
    services.accounts._cache.clear()
    pending = asyncio.ensure_future(services.accounts.session_user(token))
    services.accounts.forget(found[0].session_id)
    assert await pending is None


@pytest.mark.gen_test(timeout=60)
async def test_session_lookups_that_wait_together_share_one_query(
        services: Any, make_client: Any) -> None:
    """A reconnect storm of distinct users: each handshake gets its own user, with a handful
    of queries instead of one per handshake; unknown and revoked tokens get nobody."""
    clients = []
    for n in range(40):
        client = make_client()
        await client.signup(f"batch{n:02d}", "s3cret-pass")
        clients.append(client)
    accounts = services.accounts
    tokens = []
    for client in clients:
        signed = client.cookies["presence_session"]
        raw = tornado.web.decode_signed_value(services.settings.cookie_secret,
                                              "presence_session", signed)
        tokens.append(raw.decode())
    revoked = tokens.pop()
    await accounts.end_session(revoked)
    accounts._cache.clear()
    queries: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "sessions" in statement.lower():
            queries.append(statement)

    event.listen(services.db.engine.sync_engine, "before_cursor_execute", count)
    try:
        users = await asyncio.gather(*(accounts.session_user(t) for t in
                                       tokens + ["no-such-token", revoked]))
    finally:
        event.remove(services.db.engine.sync_engine, "before_cursor_execute", count)
    assert [u.username if u else None for u in users] == (
        [f"batch{n:02d}" for n in range(39)] + [None, None])
    assert 1 <= len(queries) <= 3, f"{len(queries)} queries for 41 lookups"
