"""Revocation is total across real processes: rotation at login and a logout during a Redis
outage close the session's sockets in every process, and no process serves the old cookie
from its cache. The measured times are printed (``pytest -s``) for BENCHMARKS-style notes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from presence_app.client import PresenceClient
from tests.conftest import PASSWORD, REDIS_URL
from tests.support.clients import signed_up, with_cookies
from tests.support.waiting import wait_until

pytestmark = pytest.mark.cluster


async def session_code(client: PresenceClient) -> int:
    return (await client.request("GET", "/api/session")).code


async def first_401(client: PresenceClient, timeout: float) -> float:
    """Poll /api/session until it answers 401; seconds it took."""
    started = time.monotonic()
    while await session_code(client) != 401:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the old cookie still works after {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def test_login_rotation_closes_old_sockets_everywhere_and_the_old_cookie_at_once(
    start_app: Any, sqlite_url: str, prefix: str
) -> None:
    a = start_app("node-a", sqlite_url, REDIS_URL, prefix)
    b = start_app("node-b", sqlite_url, REDIS_URL, prefix)

    async def scenario() -> None:
        watcher = await (await signed_up(a.url, "alice")).connect()
        bob = await signed_up(a.url, "bob")
        old = dict(bob.cookies)
        on_b = with_cookies(b.url, old)
        sock_a, sock_b = await bob.connect(), await on_b.connect()
        await watcher.wait_status("bob", True, timeout=5)
        assert await session_code(on_b) == 200  # B has the old session in its cache now
        await bob.login("bob", PASSWORD)  # same browser: the old session is rotated out
        answered = time.monotonic()
        assert bob.cookies["presence_session"] != old["presence_session"]
        revoked_after = await first_401(on_b, timeout=1.0)
        assert await sock_a.wait_closed(timeout=5) == 4001
        assert await sock_b.wait_closed(timeout=5) == 4001
        closed_after = time.monotonic() - answered
        print(
            f"\nrotation: old cookie 401 on the other process after {revoked_after * 1e3:.0f}"
            f" ms; its socket there closed within {closed_after * 1e3:.0f} ms"
        )
        assert revoked_after < 0.5, f"old cookie served for {revoked_after:.3f} s"
        assert closed_after < 2.0
        await watcher.wait_status("bob", False, timeout=5)
        again = await with_cookies(b.url, bob.cookies).connect()  # the new cookie works on B
        await watcher.wait_status("bob", True, timeout=5)
        await again.close()
        await watcher.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("a_dies", [False, True], ids=["reannounced", "a-killed-rechecked"])
def test_logout_during_redis_outage_closes_the_socket_on_the_other_process(
    start_app: Any, sqlite_url: str, private_redis: Any, a_dies: bool
) -> None:
    """A remembers the revocation and announces it when Redis is back; if A dies before that,
    B's re-check of its sockets' sessions after its resync closes the socket all the same."""
    a = start_app("node-a", sqlite_url, private_redis.url, "p")
    b = start_app("node-b", sqlite_url, private_redis.url, "p")

    async def scenario() -> None:
        watcher = await (await signed_up(b.url, "alice")).connect()
        bob = await signed_up(a.url, "bob")
        on_b = with_cookies(b.url, bob.cookies)
        sock_b = await on_b.connect()
        await watcher.wait_status("bob", True, timeout=5)

        private_redis.stop()
        wait_until(lambda: a.health()[0] == 503 and b.health()[0] == 503, 10, "503 from both")
        assert await session_code(on_b) == 200  # while Redis is down: not cached on B
        assert (await bob.logout()).code == 302  # on A; its broadcast cannot go out
        # B cannot hear of it, but goes to the database while its broker is unhealthy.
        assert await session_code(on_b) == 401
        assert (await sock_b.ping())["type"] == "pong"  # B has no way to know yet
        if a_dies:
            a.kill()

        back = time.monotonic()  # from the launch of redis-server (it answers ms later)
        private_redis.start()
        assert await sock_b.wait_closed(timeout=10) == 4001
        closed_after = time.monotonic() - back
        print(
            f"\noutage ({'A killed' if a_dies else 'A alive'}): the revoked session's "
            f"socket on the other process closed {closed_after:.2f} s after Redis was back"
        )
        assert closed_after < 8.0
        await watcher.wait_status("bob", False, timeout=8)
        wait_until(lambda: b.health()[0] == 200, 15, "200 again")
        if not a_dies:
            wait_until(lambda: "Announced 1 revocation(s)" in a.log(), 5, "A to re-announce")
        await watcher.close()

    asyncio.run(scenario())
    assert b.proc is not None and b.proc.poll() is None
