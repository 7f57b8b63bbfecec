"""Errors that say what happened, and waits that can wait for ever: against the app over both
brokers and both databases (the conftest fixture chain), plus a throttling server process."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from presence_app.client import (
    ClientError,
    LoginFailed,
    PresenceClient,
    SessionEnded,
    SignupFailed,
    Throttled,
    WaitTimeout,
    reconnect_delay,
)
from presence_app.client.view import missed_events
from tests.support.clients import PASSWORD
from tests.support.env import ROOT


async def connected(make_client: Any, name: str, reconnect: bool) -> Any:
    client = make_client()
    await client.signup(name, PASSWORD)
    return await client.connect(reconnect=reconnect)


@pytest.mark.gen_test
@pytest.mark.parametrize("reconnect", [False, True])
async def test_wait_timeout_names_what_it_waited_for(make_client, reconnect):
    await make_client().signup("bob", PASSWORD)  # known, never online
    sock = await connected(make_client, "alice", reconnect)
    try:
        with pytest.raises(WaitTimeout) as info:
            await sock.wait_status("bob", True, timeout=0.3)
        assert info.value.what == "bob to be online"
        assert info.value.last_seen_state == sock.state["bob"]
        assert info.value.last_seen_state["online"] is False
        assert "bob to be online" in str(info.value) and "0.3 s" in str(info.value)
        assert isinstance(info.value, asyncio.TimeoutError)  # what callers caught before
        assert isinstance(info.value, ClientError)

        with pytest.raises(WaitTimeout) as info:
            await sock.wait_status("nobody", False, timeout=0.2)
        assert (info.value.what, info.value.last_seen_state) == ("nobody to be offline", None)
        with pytest.raises(WaitTimeout) as info:
            await sock.wait_for(lambda m: False, 0.2, what="a pigeon")
        assert info.value.what == "a pigeon"
        assert info.value.last_seen_state is sock.last_message is not None  # the last one read
        with pytest.raises(WaitTimeout, match="waiting for a message"):
            await sock.recv(0.2)
        assert (await sock.ping())["type"] == "pong"  # still usable after the timeouts
    finally:
        await sock.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("reconnect", [False, True])
async def test_timeout_none_waits_until_it_happens(make_client, reconnect):
    bob = make_client()
    await bob.signup("bob", PASSWORD)
    sock = await connected(make_client, "alice", reconnect)
    try:
        waiting = asyncio.ensure_future(sock.wait_status("bob", True, timeout=None))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await bob.connect()
        entry = await asyncio.wait_for(waiting, 10)
        assert entry["online"] is True and sock.online("bob") is True

        forever = asyncio.ensure_future(sock.wait_status("carol", True, timeout=None))
        await asyncio.sleep(0.5)
        assert not forever.done()
        forever.cancel()  # the caller's way to stop waiting
        with pytest.raises(asyncio.CancelledError):
            await forever
        assert (await sock.ping(timeout=None))["type"] == "pong"
    finally:
        await sock.close()


@pytest.mark.gen_test
async def test_login_and_signup_failures_are_typed(make_client):
    client = make_client()
    await client.signup("alice", PASSWORD)
    with pytest.raises(SignupFailed) as taken:
        await make_client().signup("ALICE", PASSWORD)
    assert taken.value.status == 409 and "taken" in taken.value.message.lower()
    with pytest.raises(LoginFailed) as failed:
        await make_client().login("alice", "wrong password")
    assert (failed.value.status, failed.value.message) == (401, "Wrong username or password.")
    assert str(failed.value) == "login failed (HTTP 401): Wrong username or password."
    response = await make_client().login("alice", "wrong password", check=False)
    assert response.code == 401  # check=False: the raw answer, as before


@pytest.mark.gen_test
async def test_no_session_is_session_ended(make_client):
    client = make_client()
    await client.signup("alice", PASSWORD)
    stranger = make_client()
    with pytest.raises(SessionEnded) as refused:
        await stranger.connect()
    assert refused.value.status == 401  # and a ClientError with .status, as before
    with pytest.raises(SessionEnded):
        await stranger.users()
    await client.logout()
    with pytest.raises(SessionEnded):
        await client.connect(reconnect=True)


@pytest.mark.gen_test
async def test_credentials_log_in_by_themselves(make_client, base_url):
    await make_client().signup("alice", PASSWORD)
    sock = await PresenceClient(base_url, username="alice", password=PASSWORD).connect()
    assert sock.me == "alice"
    await sock.close()
    with pytest.raises(LoginFailed):
        await PresenceClient(base_url, username="alice", password="not it").connect()


@pytest.mark.gen_test
async def test_unreachable_server_is_a_client_error():
    with pytest.raises(ClientError) as info:
        await PresenceClient("http://127.0.0.1:1").connect(timeout=5)
    assert info.value.status is None and not isinstance(info.value, SessionEnded)


@pytest.mark.gen_test
async def test_a_reader_far_behind_is_caught_up(make_client):
    """Past its queue limit a reconnecting socket replaces what was not read by the current
    view: memory stays bounded, and the view still ends true."""
    bob = make_client()
    await bob.signup("bob", PASSWORD)
    sock = await connected(make_client, "alice", True)
    sock._max_queue = 3
    try:
        for _ in range(3):
            bob_sock = await bob.connect()
            await bob_sock.close()
        await asyncio.sleep(0.5)  # six events have arrived, nothing read
        first = await sock.recv()
        assert first["type"] == "caught_up" and first["dropped"] >= 3
        truth = {u["username"]: u["online"] for u in await bob.users()}
        assert {name: sock.online(name) for name in truth} == truth
    finally:
        await sock.close()


@pytest.mark.gen_test
async def test_close_ends_a_reader_that_is_waiting(make_client):
    sock = await connected(make_client, "alice", True)
    seen: list[dict] = []

    async def read() -> None:
        async for event in sock:
            seen.append(event)

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.3)
    await sock.close()
    await asyncio.wait_for(reader, 5)  # ended, not raised
    assert sock.connection_state == "closed"
    with pytest.raises(ClientError, match="closed"):
        await sock.recv()


# --- the rules, without a server -------------------------------------------------------------


def page_constant(name: str) -> float:
    script = (ROOT / "static/js/connection.js").read_text()
    found = re.search(rf"export const {name} = (\d+);", script)
    assert found, f"static/js/connection.js: no {name}"
    return float(found.group(1)) / 1000


@pytest.mark.parametrize(
    "attempt,code,ceiling",
    [
        (0, None, 0.5),
        (1, None, 1.0),
        (2, 1006, 2.0),
        (5, None, 15.0),
        (30, None, 15.0),
        (0, 1001, 2.0),  # a restart: the first wait spreads over 2 s
        (3, 1001, 4.0),  # ... unless the backoff is already longer
    ],
)
def test_reconnect_waits_follow_the_page(attempt, code, ceiling):
    assert reconnect_delay(attempt, code, lambda: 1.0) == pytest.approx(ceiling)
    assert reconnect_delay(attempt, code, lambda: 0.0) == 0.0  # full jitter: from 0
    assert page_constant("BACKOFF_BASE_MS") == 0.5 and page_constant("BACKOFF_CAP_MS") == 15
    assert page_constant("RESTART_WINDOW_MS") == 2.0


def test_missed_events_say_what_a_new_snapshot_changed():
    before = {
        "bob": {"username": "bob", "online": True},
        "gone": {"username": "gone", "online": False},
    }
    after = {
        "bob": {"username": "bob", "online": False, "last_seen": "t", "version": 7},
        "new": {"username": "new", "online": False, "last_seen": None, "version": 1},
    }
    assert missed_events(before, after) == [
        {
            "type": "presence",
            "username": "bob",
            "online": False,
            "last_seen": "t",
            "version": 7,
            "missed": True,
        },
        {
            "type": "presence",
            "username": "new",
            "online": False,
            "last_seen": None,
            "version": 1,
            "missed": True,
        },
        {"type": "removed", "username": "gone", "missed": True},
    ]
    assert missed_events(after, after) == []


@pytest.mark.cluster
def test_failed_logins_are_throttled(start_server):
    server = start_server("--login-max-failures", "2")

    async def scenario() -> None:
        await PresenceClient(server.url).signup("alice", PASSWORD)
        for _ in range(2):
            with pytest.raises(LoginFailed):
                await PresenceClient(server.url).login("alice", "wrong password")
        with pytest.raises(Throttled) as info:
            await PresenceClient(server.url).login("alice", PASSWORD)  # blocked too
        assert info.value.status == 429 and (info.value.retry_after or 0) > 0
        assert "Try again" in str(info.value)

    asyncio.run(scenario())
