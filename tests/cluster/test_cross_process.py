"""Presence across real processes sharing Redis: directly, through nginx, under churn."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from presence_app.client import PresenceClient, PresenceSocket
from tests.conftest import REDIS_URL
from tests.support.clients import logged_in, signed_up
from tests.support.http import http_json

pytestmark = pytest.mark.cluster


def test_status_reaches_clients_of_every_process(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix)

    async def scenario() -> None:
        alice = await signed_up(a.url, "alice")
        watcher = await alice.connect()
        bob = await signed_up(b.url, "bob")  # a sign-up on B appears live on A
        await watcher.wait_status("bob", False, timeout=5)
        bob_sock = await bob.connect()
        await watcher.wait_status("bob", True, timeout=5)
        # Both processes tell the same story (the session cookie works on both).
        for base in (a.url, b.url):
            reader = PresenceClient(base)
            reader.cookies = dict(alice.cookies)
            users = {u["username"]: u["online"] for u in await reader.users()}
            assert users == {"alice": True, "bob": True}
        await bob_sock.close()
        offline = await watcher.wait_status("bob", False, timeout=5)
        assert offline["last_seen"]
        await watcher.close()

    asyncio.run(scenario())
    assert a.health()[1]["node"] == "node-a" and b.health()[1]["node"] == "node-b"


def test_logout_closes_sockets_in_every_process(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix)

    async def scenario() -> None:
        bob = await signed_up(a.url, "bob")
        on_b = PresenceClient(b.url)
        on_b.cookies = dict(bob.cookies)  # the same session, used against process B
        sock_b = await on_b.connect()
        await bob.logout()
        assert await sock_b.wait_closed(timeout=5) == 4001
        refused = PresenceClient(b.url)
        refused.cookies = dict(on_b.cookies)
        with pytest.raises(Exception) as info:
            await refused.connect()
        assert getattr(info.value, "status", None) == 401

    asyncio.run(scenario())


def test_presence_through_nginx(
    start_app: Any, start_nginx: Any, sqlite_url: str, prefix: str
) -> None:
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix)
    proxy = start_nginx([a.port, b.port])

    async def scenario() -> None:
        alice = await signed_up(proxy.url, "alice")
        bob = await signed_up(proxy.url, "bob")
        # A browser-like Origin with the proxy's non-default port must pass the origin check.
        watchers = [await alice.connect(origin=proxy.url) for _ in range(4)]
        bob_socks = [await bob.connect(origin=proxy.url) for _ in range(4)]
        for watcher in watchers:
            await watcher.wait_status("bob", True, timeout=5)
        # nginx spread the sockets over both processes: the events crossed processes.
        assert a.health()[1]["sockets"] > 0 and b.health()[1]["sockets"] > 0
        for sock in bob_socks:
            await sock.close()
        for watcher in watchers:
            await watcher.wait_status("bob", False, timeout=5)
            await watcher.close()
        with pytest.raises(Exception) as info:
            await alice.connect(origin="http://evil.example")
        assert getattr(info.value, "status", None) == 403

    asyncio.run(scenario())
    status, body = http_json(proxy.url + "/healthz")
    assert status == 200 and body["node"] in {"node-a", "node-b"}


def test_churn_of_one_user_across_processes_converges(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    nodes = [start_app(f"node-{i}", sqlite_url, REDIS_URL, prefix) for i in range(3)]

    async def churn(client: PresenceClient, rounds: int) -> None:
        for _ in range(rounds):
            sock = await client.connect()
            await asyncio.sleep(random.random() * 0.02)
            await sock.close()

    async def scenario() -> None:
        await signed_up(nodes[0].url, "mover")
        watchers: list[PresenceSocket] = []
        for node in nodes:
            watcher_client = await signed_up(node.url, f"watch-{node.name}")
            watchers.append(await watcher_client.connect())
        movers = [await logged_in(node.url, "mover") for node in nodes for _ in range(2)]
        await asyncio.gather(*(churn(m, 15) for m in movers))
        # Everyone closed: every observer converges on offline, having applied nothing stale.
        for watcher in watchers:
            await watcher.wait_status("mover", False, timeout=5)
        await asyncio.sleep(0.5)
        for watcher in watchers:
            assert watcher.online("mover") is False
            assert watcher.stale == [], "a process forwarded an out-of-order event"
        # And while one socket stays open somewhere, everyone converges on online.
        last = await movers[-1].connect()
        await asyncio.gather(*(churn(m, 5) for m in movers[:-1]))
        for watcher in watchers:
            await watcher.wait_status("mover", True, timeout=5)
        await asyncio.sleep(0.5)
        assert all(w.online("mover") is True for w in watchers)
        users = {u["username"]: u["online"] for u in await movers[0].users()}
        assert users["mover"] is True
        await last.close()
        for watcher in watchers:
            await watcher.wait_status("mover", False, timeout=5)
            await watcher.close()

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 60
