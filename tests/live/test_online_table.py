"""The durable side of presence: the online_users table and users.last_seen."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import tornado.httpserver
import tornado.testing
from sqlalchemy import select

from handlers import make_app
from presence_app.client import PresenceClient
from presence_app.db.database import OnlineUser, User
from presence_app.live.ledger import parse_time
from presence_app.services import open_services
from tests.conftest import PASSWORD


async def online_rows(services: Any, username: str | None = None) -> dict[tuple[str, str], int]:
    """{(username, node): connections} after writing whatever the ledger still holds."""
    await services.ledger.flush()
    query = select(User.username, OnlineUser.node_id, OnlineUser.connections).join(
        User, User.id == OnlineUser.user_id
    )
    if username is not None:
        query = query.where(User.username == username)
    async with services.db.read() as session:
        rows = (await session.execute(query)).all()
    return {(r.username, r.node_id): r.connections for r in rows}


async def last_seen(services: Any, username: str) -> dt.datetime | None:
    await services.ledger.flush()
    async with services.db.read() as session:
        value = await session.scalar(select(User.last_seen).where(User.username == username))
    if value is not None and value.tzinfo is None:  # SQLite returns naive UTC
        value = value.replace(tzinfo=dt.UTC)
    return value


async def eventually(
    probe: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 5.0
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await probe()
        if got == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            assert got == expected
        await asyncio.sleep(0.05)


@pytest.mark.gen_test
async def test_rows_count_connections_per_user_and_node(services, user_factory):
    node = services.settings.node_id
    alice, bob = await user_factory("alice"), await user_factory("bob")
    assert await online_rows(services) == {}
    a1, a2 = await alice.connect(), await alice.connect()
    b1 = await bob.connect()
    await eventually(lambda: online_rows(services), {("alice", node): 2, ("bob", node): 1})
    await a1.close()
    await eventually(lambda: online_rows(services), {("alice", node): 1, ("bob", node): 1})
    await a2.close()
    await eventually(lambda: online_rows(services), {("bob", node): 1})
    await b1.close()
    await eventually(lambda: online_rows(services), {})


@pytest.mark.gen_test
async def test_last_seen_is_written_when_a_user_goes_offline(services, user_factory):
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watcher = await alice.connect()
    assert await last_seen(services, "bob") is None
    tab = await bob.connect()
    await watcher.wait_status("bob", True)
    await tab.close()
    event = await watcher.wait_status("bob", False)
    expected = parse_time(event["last_seen"])
    await eventually(lambda: last_seen(services, "bob"), expected)
    # A later session moves it forward.
    tab = await bob.connect()
    await watcher.wait_status("bob", True)
    await tab.close()
    later = parse_time((await watcher.wait_status("bob", False))["last_seen"])
    assert later > expected
    await eventually(lambda: last_seen(services, "bob"), later)


@pytest.mark.gen_test
async def test_a_fresh_process_reads_last_seen_from_the_database(services, user_factory):
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watcher = await alice.connect()
    tab = await bob.connect()
    await watcher.wait_status("bob", True)
    await tab.close()
    event = await watcher.wait_status("bob", False)
    await eventually(lambda: last_seen(services, "bob"), parse_time(event["last_seen"]))
    # A second process on the same database, with an in-process broker: only the database
    # can tell it when bob was last seen.
    fresh = replace(services.settings, node_id="fresh-node", redis_url="")
    async with open_services(fresh) as other:
        users = {u["username"]: u for u in other.presence.users()}
        assert users["bob"]["online"] is False
        assert parse_time(users["bob"]["last_seen"]) == parse_time(event["last_seen"])


@pytest.mark.gen_test
async def test_shutdown_closes_sockets_and_clears_its_rows(services, user_factory):
    """A second node on the same database stops: 1001 to its sockets, its rows gone."""
    await user_factory("alice")
    node_b = replace(services.settings, node_id="node-b")
    listener, port = tornado.testing.bind_unused_port()
    async with open_services(node_b) as other:
        server = tornado.httpserver.HTTPServer(make_app(other))
        server.add_sockets([listener])
        client = PresenceClient(f"http://127.0.0.1:{port}")
        await client.login("alice", PASSWORD)
        socks = [await client.connect(), await client.connect()]
        await eventually(lambda: online_rows(services), {("alice", "node-b"): 2})
        server.stop()
    try:
        for sock in socks:
            assert await sock.wait_closed(timeout=5) == 1001
        assert await online_rows(services) == {}
        assert await last_seen(services, "alice") is not None
    finally:
        await server.close_all_connections()
