"""Passwords are taken verbatim; expired sessions are purged; the secret file is logged."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from sqlalchemy import delete, event, func, select, update

from presence_app.db.database import Session, User
from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]


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
        await session.execute(
            update(Session)
            .where(Session.user_id == 1)
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
        )
    await services.sync.purge_sessions()
    async with services.db.read() as session:
        left = await session.scalar(select(func.count()).select_from(Session))
    assert left == 1


def test_generating_the_cookie_secret_is_logged(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, run; sys.exit(run.main(sys.argv[1:]))",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--database-url",
            "postgresql://nobody@127.0.0.1:1/none",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The database is unreachable, but only after the secret was generated and logged.
    assert result.returncode == 2
    assert "Generated a new cookie secret" in result.stderr
    assert (tmp_path / "cookie_secret").stat().st_mode & 0o777 == 0o600


@pytest.mark.gen_test
async def test_concurrent_lookups_of_one_session_share_one_query(
    services: Any, user_factory: Any
) -> None:
    alice = await user_factory("alice")
    raw = tornado.web.decode_signed_value(
        services.settings.cookie_secret, "presence_session", alice.cookies["presence_session"]
    )
    assert raw is not None
    token = raw.decode()
    services.accounts._cache.clear()
    queries = 0

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        nonlocal queries
        queries += "sessions" in statement

    event.listen(services.db.engine.sync_engine, "before_cursor_execute", count)
    try:
        found = await asyncio.gather(*(services.accounts.session_user(token) for _ in range(50)))
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
    services: Any, make_client: Any
) -> None:
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
        raw = tornado.web.decode_signed_value(
            services.settings.cookie_secret, "presence_session", signed
        )
        assert raw is not None
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
        users = await asyncio.gather(
            *(accounts.session_user(t) for t in tokens + ["no-such-token", revoked])
        )
    finally:
        event.remove(services.db.engine.sync_engine, "before_cursor_execute", count)
    assert [u.username if u else None for u in users] == (
        [f"batch{n:02d}" for n in range(39)] + [None, None]
    )
    assert 1 <= len(queries) <= 3, f"{len(queries)} queries for 41 lookups"


# -- revocation is total: every revoked or expired session's sockets close ----------------------


async def session_status(client: Any, cookies: dict[str, str] | None = None) -> int:
    """/api/session's status for ``client``'s cookies (or ``cookies``)."""
    saved = dict(client.cookies)
    if cookies is not None:
        client.cookies = dict(cookies)
    try:
        return (await client.request("GET", "/api/session")).code
    finally:
        client.cookies = saved


@pytest.mark.gen_test
async def test_login_again_closes_the_old_sessions_sockets(
    user_factory: Any, make_client: Any
) -> None:
    watcher = await (await user_factory("alice")).connect()
    bob = await user_factory("bob")
    phone = make_client()
    await phone.login("bob", PASSWORD)
    old_tabs = [await bob.connect(), await bob.connect()]
    phone_tab = await phone.connect()
    await watcher.wait_status("bob", True)
    old_cookies = dict(bob.cookies)
    assert await session_status(bob) == 200  # the old session is cached now
    await bob.login("bob", PASSWORD)  # same browser, same cookie: rotation
    for tab in old_tabs:
        assert await tab.wait_closed(timeout=5) == 4001
    assert await session_status(bob, old_cookies) == 401
    assert await session_status(bob) == 200
    assert (await phone_tab.ping())["type"] == "pong"  # another session of bob: untouched
    assert watcher.online("bob") is True
    await (await bob.connect()).close()


@pytest.mark.gen_test
async def test_signup_from_a_logged_in_browser_closes_the_earlier_sessions_sockets(
    user_factory: Any,
) -> None:
    bob = await user_factory("bob")
    old_cookies = dict(bob.cookies)
    tab = await bob.connect()
    await bob.signup("carol", PASSWORD)  # the same browser signs up a second account
    assert await tab.wait_closed(timeout=5) == 4001
    assert await session_status(bob, old_cookies) == 401
    assert (await bob.connect()).me == "carol"


@pytest.mark.gen_test
async def test_expired_session_closes_its_socket_and_the_user_goes_offline(
    services: Any, user_factory: Any
) -> None:
    watcher = await (await user_factory("alice")).connect()
    bob = await user_factory("bob")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.0)
    async with services.db.write() as session:
        await session.execute(update(Session).where(Session.user_id == 2).values(expires_at=soon))
    services.accounts.clear_cache()
    sock = await bob.connect()
    await watcher.wait_status("bob", True)
    assert await sock.wait_closed(timeout=6) == 4001
    closed_after = dt.datetime.now(dt.UTC) - soon
    # Checked every heartbeat interval (0.5 s here): a few seconds' accuracy at most.
    assert closed_after < dt.timedelta(seconds=2.5), closed_after
    await watcher.wait_status("bob", False, timeout=5)
    assert await session_status(bob) == 401


@pytest.mark.gen_test
async def test_expired_session_is_not_served_from_the_cache(
    services: Any, user_factory: Any
) -> None:
    bob = await user_factory("bob")
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
    async with services.db.write() as session:
        await session.execute(update(Session).values(expires_at=soon))
    services.accounts.clear_cache()
    assert await session_status(bob) == 200  # cached now, for at most what is left
    await asyncio.sleep(0.5)
    assert await session_status(bob) == 401


@pytest.mark.parametrize("how", ["service", "broker-message"])
@pytest.mark.gen_test
async def test_user_level_revocation_closes_every_socket_of_the_user(
    services: Any, user_factory: Any, make_client: Any, how: str
) -> None:
    alice = await user_factory("alice")
    watcher = await alice.connect()
    bob = await user_factory("bob")
    phone = make_client()
    await phone.login("bob", PASSWORD)
    tabs = [await bob.connect(), await bob.connect(), await phone.connect()]
    await watcher.wait_status("bob", True)
    assert await session_status(bob) == 200 and await session_status(phone) == 200
    assert await services.accounts.end_user_sessions("BOB") == 2  # case-insensitive
    if how == "service":
        await services.presence.end_user_sessions("bob")
    else:  # as another process announces it: through the broker only
        await services.backend.publish(
            json.dumps({"type": "user_sessions_ended", "username": "Bob"})
        )
    for tab in tabs:
        assert await tab.wait_closed(timeout=5) == 4001
    await watcher.wait_status("bob", False, timeout=5)
    assert await session_status(bob) == 401 and await session_status(phone) == 401
    assert (await watcher.ping())["type"] == "pong"  # alice is untouched
    assert await session_status(alice) == 200
    await bob.login("bob", PASSWORD)  # and bob can come back at once
    await (await bob.connect()).close()


@pytest.mark.gen_test
async def test_cache_is_bypassed_while_the_broker_is_unhealthy(
    services: Any, user_factory: Any
) -> None:
    """Another process's logout whose broadcast is lost (Redis down) must not be undone by
    this process's cache: while the broker has a problem, lookups go to the database."""
    bob = await user_factory("bob")
    assert await session_status(bob) == 200  # cached
    async with services.db.write() as session:
        await session.execute(delete(Session))  # the other process's logout
    services.backend.problem = "redis unreachable: test"
    try:
        assert await session_status(bob) == 401
    finally:
        services.backend.problem = None


@pytest.mark.gen_test
async def test_resubscribe_clears_the_cache_and_rechecks_open_sockets(
    services: Any, user_factory: Any
) -> None:
    watcher = await (await user_factory("alice")).connect()
    bob = await user_factory("bob")
    sock = await bob.connect()
    await watcher.wait_status("bob", True)
    assert await session_status(bob) == 200  # cached
    async with services.db.write() as session:  # a logout whose announcement was missed
        await session.execute(delete(Session).where(Session.user_id == 2))
    await services.sync.resubscribed()
    assert await session_status(bob) == 401
    assert await sock.wait_closed(timeout=5) == 4001
    await watcher.wait_status("bob", False, timeout=5)
    assert (await watcher.ping())["type"] == "pong"


@pytest.mark.gen_test
async def test_signup_runs_bcrypt_once(make_client: Any, monkeypatch: Any) -> None:
    import bcrypt

    calls: list[str] = []
    for name in ("hashpw", "checkpw"):
        real = getattr(bcrypt, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(bcrypt, name, counted)
    client = make_client()
    response = await client.signup("bob", PASSWORD)
    assert response.code == 302 and response.headers["Location"] == "/"
    assert calls == ["hashpw"]
    assert await session_status(client) == 200


@pytest.mark.gen_test
async def test_failed_session_insert_leaves_no_account(services: Any, make_client: Any) -> None:
    """Sign-up writes the account and its session in one transaction: a failure leaves
    nothing behind, and the name is still free."""

    def fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SESSIONS"):
            raise RuntimeError("injected failure of the session insert")

    client = make_client()
    event.listen(services.db.engine.sync_engine, "before_cursor_execute", fail)
    try:
        response = await client.signup("bob", PASSWORD, check=False)
    finally:
        event.remove(services.db.engine.sync_engine, "before_cursor_execute", fail)
    assert response.code == 500
    async with services.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 0
    assert (await client.signup("bob", PASSWORD, check=False)).code == 302
