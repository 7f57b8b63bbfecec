"""``connect(reconnect=True)`` against a real ``run.py`` that restarts, over both brokers:
the client comes back with the true state, logs in again only when it holds credentials,
and stops with ``SessionEnded`` on a 4001."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from presence_app.client import PresenceClient, ReconnectingSocket, SessionEnded
from tests.support.apps import AppProcess
from tests.support.clients import PASSWORD, logged_in, sign_up, with_cookies

pytestmark = pytest.mark.cluster


async def read_until(
    sock: ReconnectingSocket, done: Any, timeout: float = 20.0, seen: list[dict] | None = None
) -> list[dict]:
    """Every message read (appended to ``seen``) until ``done()`` holds after one."""
    seen = [] if seen is None else seen
    async with asyncio.timeout(timeout):
        async for event in sock:
            seen.append(event)
            if done():
                return seen
    raise AssertionError(f"the stream ended: {seen}")


def truth(users: list[dict[str, Any]]) -> dict[str, bool]:
    return {u["username"]: bool(u["online"]) for u in users}


def test_survives_a_restart_and_ends_with_the_true_state(server: AppProcess) -> None:
    """bob is online before the restart (his socket dies with the server), carol comes
    online after it: alice's view ends as /api/users says, having said what changed."""
    sign_up(server.url, "alice", "bob", "carol")

    async def scenario() -> None:
        alice = await logged_in(server.url, "alice")
        sock = await alice.connect(reconnect=True)
        bob_sock = await (await logged_in(server.url, "bob")).connect()
        await sock.wait_status("bob", True)
        await asyncio.to_thread(server.restart)
        await sock.wait_live(timeout=20)  # connected again (the view is read below)
        carol_sock = await (await logged_in(server.url, "carol")).connect()
        seen: list[dict] = []

        def told(name: str, online: bool) -> bool:
            return any(
                e["type"] == "presence" and e["username"] == name and e["online"] is online
                for e in seen
            )

        await read_until(
            sock, lambda: sock.synced and told("bob", False) and told("carol", True), seen=seen
        )
        kinds = [event["type"] for event in seen]
        assert {"type": "disconnected", "code": 1001} in seen
        assert kinds.index("disconnected") < kinds.index("reconnected")
        assert (sock.reconnects, sock.connection_state) == (1, "live")
        expected = {"alice": True, "bob": False, "carol": True}
        assert truth(await alice.users()) == expected
        assert {name: sock.online(name) for name in expected} == expected
        assert bob_sock.close_code == 1001
        await carol_sock.close()
        await sock.wait_status("carol", False)  # live events flow on the new connection
        await sock.close()
        assert sock.connection_state == "closed"

    asyncio.run(scenario())


def test_a_gone_session_is_logged_in_again_only_with_credentials(server: AppProcess) -> None:
    """The sessions are revoked while the server is down: the client given credentials logs
    in again and reconnects; the one without ends with SessionEnded (401)."""
    sign_up(server.url, "alice", "bob")

    async def scenario() -> None:
        alice = PresenceClient(server.url, username="alice", password=PASSWORD)
        alice_sock = await alice.connect(reconnect=True)  # logs in by itself
        old_session = alice.cookies["presence_session"]
        bob_sock = await (await logged_in(server.url, "bob")).connect(reconnect=True)
        await asyncio.to_thread(server.stop)
        for name in ("alice", "bob"):
            done = await asyncio.to_thread(server.command, "users", "revoke-sessions", name)
            assert done.returncode == 0, done.stderr
        await asyncio.to_thread(server.start)

        await alice_sock.wait_for(lambda m: m["type"] == "reconnected", 20, "the reconnect")
        assert alice.cookies["presence_session"] != old_session
        assert alice_sock.online("alice") is True
        with pytest.raises(SessionEnded) as ended:
            await read_until(bob_sock, lambda: False)
        assert ended.value.status == 401 and ended.value.close_code is None
        assert "no credentials" in str(ended.value)
        assert bob_sock.connection_state == "closed"
        await alice_sock.close()
        await bob_sock.close()

    asyncio.run(scenario())


def test_a_logout_in_another_tab_ends_the_stream(server: AppProcess) -> None:
    """4001 is meant: even a client with credentials stops, with SessionEnded."""
    sign_up(server.url, "alice", "bob")

    async def scenario() -> None:
        alice = PresenceClient(server.url, username="alice", password=PASSWORD)
        sock = await alice.connect(reconnect=True)
        bob = await logged_in(server.url, "bob")
        watcher = await bob.connect()
        await watcher.wait_status("alice", True)
        tab = with_cookies(server.url, alice.cookies)  # the same session in another tab
        await tab.logout()
        with pytest.raises(SessionEnded) as ended:
            await read_until(sock, lambda: False, timeout=10)
        assert ended.value.close_code == 4001
        assert (sock.connection_state, sock.close_code, sock.reconnects) == ("closed", 4001, 0)
        await watcher.wait_status("alice", False)  # not back: it did not log in again
        await asyncio.sleep(1.0)
        assert truth(await bob.users())["alice"] is False
        await sock.close()  # closing a finished stream is fine
        await watcher.close()

    asyncio.run(scenario())
