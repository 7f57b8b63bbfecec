"""Crashes, shutdowns and Redis outages: nobody stuck online or offline, nothing lost."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from sqlalchemy import select

from presence_app.client import PresenceClient
from presence_app.db.database import Database, OnlineUser, User
from tests.conftest import PASSWORD, REDIS_URL
from tests.support.clients import signed_up
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster


async def table_rows(database_url: str) -> tuple[set[tuple[str, str]], dict[str, Any]]:
    """(user, node) pairs of the online-users table and users.last_seen by name."""
    db = Database(database_url)
    try:
        async with db.read() as session:
            rows = (
                await session.execute(
                    select(User.username, OnlineUser.node_id).join(
                        OnlineUser, OnlineUser.user_id == User.id
                    )
                )
            ).all()
            seen = dict((await session.execute(select(User.username, User.last_seen))).all())
        return {(r[0], r[1]) for r in rows}, seen
    finally:
        await db.close()


def test_killed_process_users_go_offline_within_heartbeat_timeout(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix)

    async def scenario() -> None:
        alice = await signed_up(a.url, "alice")
        watcher = await alice.connect()
        bob = await signed_up(b.url, "bob")
        bob_sock = await bob.connect()
        await watcher.wait_status("bob", True, timeout=5)
        await asyncio.sleep(0.4)  # let B write its online-users row
        rows, _ = await table_rows(sqlite_url)
        assert ("bob", "node-b") in rows

        b.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        killed = time.monotonic()
        offline = await watcher.wait_status("bob", False, timeout=6)
        elapsed = time.monotonic() - killed
        assert elapsed < 2.0 + 2.5, f"offline after {elapsed:.1f} s (heartbeat timeout 2 s)"
        assert offline["last_seen"]
        rows, seen = await table_rows(sqlite_url)
        assert not any(node == "node-b" for _, node in rows)
        assert seen["bob"] is not None
        assert bob_sock is not None

        # B restarts with the same node id: it starts clean and serves again.
        b.start()
        again = await bob.connect()
        await watcher.wait_status("bob", True, timeout=5)
        await again.close()
        await watcher.wait_status("bob", False, timeout=5)
        await watcher.close()

    asyncio.run(scenario())


def test_restart_with_same_node_id_clears_stale_rows(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    """A process killed and restarted at once (before anyone reaps it) clears its own leftovers."""
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix, "--heartbeat-timeout", "30")

    async def scenario() -> None:
        bob = await signed_up(a.url, "bob")
        await bob.connect()
        await asyncio.sleep(0.4)
        assert ("bob", "node-a") in (await table_rows(sqlite_url))[0]
        a.kill()
        a.start()
        watcher = await (await signed_up(a.url, "alice")).connect()
        assert watcher.online("bob") is False, "bob stayed online after his process died"
        assert ("bob", "node-a") not in (await table_rows(sqlite_url))[0]
        await watcher.close()

    asyncio.run(scenario())


def test_sigterm_closes_with_1001_and_offline_at_once(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix, "--heartbeat-timeout", "30")

    async def scenario() -> None:
        watcher = await (await signed_up(a.url, "alice")).connect()
        bob = await signed_up(b.url, "bob")
        bob_sock = await bob.connect()
        await watcher.wait_status("bob", True, timeout=5)
        started = time.monotonic()
        exit_task = asyncio.get_running_loop().run_in_executor(None, b.terminate, 10.0)
        assert await bob_sock.wait_closed(timeout=5) == 1001
        await watcher.wait_status("bob", False, timeout=3)
        # Far below the 30 s heartbeat timeout: the shutdown announced it.
        assert time.monotonic() - started < 3
        assert await exit_task < 5.0
        assert b.proc is not None and b.proc.returncode == 0
        await asyncio.sleep(0.3)
        assert not any(node == "node-b" for _, node in (await table_rows(sqlite_url))[0])
        await watcher.close()

    asyncio.run(scenario())


def test_redis_outage_and_empty_restart_resynchronise(
    start_app: Any, sqlite_url: str, private_redis: Any
) -> None:
    a = start_app("node-a", sqlite_url, private_redis.url, "p")
    b = start_app("node-b", sqlite_url, private_redis.url, "p")

    async def scenario() -> None:
        alice = await signed_up(a.url, "alice")
        watcher = await alice.connect()
        bob = await signed_up(b.url, "bob")
        carol = await signed_up(b.url, "carol")
        bob_sock = await bob.connect()
        carol_sock = await carol.connect()
        await watcher.wait_status("bob", True, timeout=5)
        await watcher.wait_status("carol", True, timeout=5)

        private_redis.stop()
        wait_until(lambda: a.health()[0] == 503 and b.health()[0] == 503, 10, "503 from both")
        status, body = a.health()
        assert "redis" in body["reason"].lower()
        # Still serving HTTP and local sockets while Redis is down.
        assert (await watcher.ping())["type"] == "pong"
        dave = PresenceClient(b.url)
        response = await dave.signup("dave", PASSWORD, check=False)
        assert response.code == 302, "sign-up must work without Redis"
        # Changes during the outage: carol leaves, bob stays.
        await carol_sock.close()

        private_redis.start()  # restarted empty: no state, no scripts, no epoch
        back = time.monotonic()
        wait_until(lambda: a.health()[0] == 200 and b.health()[0] == 200, 15, "200 again")
        await watcher.wait_status("carol", False, timeout=8)
        await watcher.wait_status("dave", False, timeout=8)
        assert watcher.online("bob") is True and watcher.online("alice") is True
        assert time.monotonic() - back < 10
        for client in (alice, bob):
            users = {u["username"]: u["online"] for u in await client.users()}
            assert users == {"alice": True, "bob": True, "carol": False, "dave": False}
        # And it works normally afterwards.
        await bob_sock.close()
        await watcher.wait_status("bob", False, timeout=5)
        await watcher.close()

    asyncio.run(scenario())
    assert a.proc is not None and a.proc.poll() is None
    assert b.proc is not None and b.proc.poll() is None


def test_live_process_wrongly_reaped_rejoins(start_app: Any, sqlite_url: str, prefix: str) -> None:
    """If a live process is reaped (its event loop stalled past the timeout, say), its next
    heartbeat notices and re-registers its users: nobody stays wrongly offline."""
    from presence_app.backends import open_backend

    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix)

    async def scenario() -> None:
        watcher = await (await signed_up(a.url, "alice")).connect()
        bob = await signed_up(b.url, "bob")
        await bob.connect()
        await watcher.wait_status("bob", True, timeout=5)
        async with open_backend(REDIS_URL, prefix) as backend:
            events = await backend.reap("node-b", "2026-01-01T00:00:00Z", force=True)
        assert len(events) == 1
        await watcher.wait_status("bob", False, timeout=5)
        rejoined = time.monotonic()
        await watcher.wait_status("bob", True, timeout=5)
        assert time.monotonic() - rejoined < 2.0  # within a heartbeat or two (0.5 s each)
        await watcher.close()

    asyncio.run(scenario())
