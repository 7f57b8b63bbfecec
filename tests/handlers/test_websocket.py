"""The presence WebSocket: snapshot, live events, multi-tab, logout, protocol errors, auth."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from presence_app.client import ClientError, PresenceClient, PresenceSocket
from tests.conftest import PASSWORD
from tests.support.clients import is_presence

QUIET = 0.5  # seconds in which an event that must not come would have come


async def assert_no_message(sock: PresenceSocket, predicate: Callable[[dict], bool]) -> None:
    with pytest.raises(asyncio.TimeoutError):
        found = await sock.wait_for(predicate, timeout=QUIET)
        pytest.fail(f"unexpected message {found}")


async def user_entry(client: PresenceClient, username: str) -> dict[str, Any]:
    return {u["username"]: u for u in await client.users()}[username]


def parse_iso(value: str) -> dt.datetime:
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value[:-1] + "+00:00")


@pytest.mark.gen_test
async def test_snapshot_comes_first_and_lists_me_online(user_factory):
    await user_factory("bob")  # someone else, never online
    alice = await user_factory("alice")
    sock = await alice.connect()
    # connect() has already insisted on a snapshot as the very first frame.
    assert sock.me == "alice"
    assert sock.state["alice"]["online"] is True
    assert sock.state["alice"]["last_seen"] is not None
    assert sock.state["bob"]["online"] is False
    assert sock.state["bob"]["last_seen"] is None
    assert set(sock.state) == {"alice", "bob"}


@pytest.mark.gen_test
async def test_raw_snapshot_frame(user_factory):
    alice = await user_factory("alice")
    sock = await alice.connect()  # the first client makes alice online everywhere
    from websockets.asyncio.client import connect

    async with connect(
        alice.ws_url(), additional_headers={"Cookie": alice.cookie_header()}, proxy=None
    ) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert first["type"] == "snapshot"
    assert first["me"] == "alice"
    assert [u["username"] for u in first["users"]] == ["alice"]
    assert first["users"][0]["online"] is True
    await sock.close()


@pytest.mark.gen_test
async def test_two_and_three_clients_see_each_other(user_factory):
    alice, bob, carol = [await user_factory(n) for n in ("alice", "bob", "carol")]
    a = await alice.connect()
    b = await bob.connect()
    await a.wait_status("bob", True)
    await b.wait_status("alice", True)  # in b's snapshot already, or in the event right after
    c = await carol.connect()
    for sock in (a, b, c):
        for name in ("alice", "bob", "carol"):
            await sock.wait_status(name, True)
    await c.close()
    for sock in (a, b):
        event = await sock.wait_status("carol", False)
        assert event["last_seen"] is not None
    assert [sock.stale for sock in (a, b)] == [[], []]


@pytest.mark.gen_test
async def test_second_tab_changes_nothing_until_the_last_closes(user_factory):
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watcher = await alice.connect()
    tab1 = await bob.connect()
    await watcher.wait_status("bob", True)
    tab2 = await bob.connect()
    await assert_no_message(watcher, is_presence("bob"))  # a second tab: no event at all
    await tab1.close()
    await assert_no_message(watcher, is_presence("bob", False))
    assert (await user_entry(alice, "bob"))["online"] is True
    assert (await tab2.ping())["type"] == "pong"
    await tab2.close()
    event = await watcher.wait_for(is_presence("bob", False), timeout=5)
    assert event["last_seen"] is not None
    seen = parse_iso(event["last_seen"])
    assert abs(dt.datetime.now(dt.UTC) - seen) < dt.timedelta(seconds=30)
    entry = await user_entry(alice, "bob")
    assert entry["online"] is False and entry["last_seen"] == event["last_seen"]


@pytest.mark.gen_test
async def test_new_signup_appears_live(user_factory):
    alice = await user_factory("alice")
    watcher = await alice.connect()
    assert "dave" not in watcher.state
    dave = await user_factory("dave")
    event = await watcher.wait_for(is_presence("dave"), timeout=5)
    assert event["online"] is False and event["last_seen"] is None
    await dave.connect()
    await watcher.wait_status("dave", True)


@pytest.mark.gen_test
async def test_logout_closes_that_sessions_sockets_only(user_factory, make_client):
    alice = await user_factory("alice")
    watcher = await alice.connect()
    bob_laptop = await user_factory("bob")
    bob_phone = make_client()
    await bob_phone.login("bob", PASSWORD)
    laptop_tabs = [await bob_laptop.connect(), await bob_laptop.connect()]
    phone_tab = await bob_phone.connect()
    await watcher.wait_status("bob", True)
    response = await bob_laptop.logout()
    assert response.code == 302
    for tab in laptop_tabs:
        assert await tab.wait_closed(timeout=5) == 4001
    assert (await phone_tab.ping())["type"] == "pong"
    await assert_no_message(watcher, is_presence("bob", False))
    assert (await user_entry(alice, "bob"))["online"] is True
    await phone_tab.close()
    await watcher.wait_status("bob", False)


@pytest.mark.gen_test
async def test_versions_strictly_increase_per_user(user_factory: Any) -> None:
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watchers = [await alice.connect(), await alice.connect()]
    start = watchers[0].state["bob"].get("version", 0)
    seen: list[list[dict]] = [[], []]
    for _ in range(3):
        tab = await bob.connect()
        for watcher, events in zip(watchers, seen, strict=True):
            events.append(await watcher.wait_for(is_presence("bob", True), timeout=5))
        await tab.close()
        for watcher, events in zip(watchers, seen, strict=True):
            events.append(await watcher.wait_for(is_presence("bob", False), timeout=5))
    versions = [e["version"] for e in seen[0]]
    assert all(isinstance(v, int) for v in versions)
    assert [start] + versions == sorted(set([start] + versions)), versions
    assert [e["version"] for e in seen[1]] == versions  # every client sees the same history
    assert all(e["last_seen"] for e in seen[0] if not e["online"])
    assert [w.stale for w in watchers] == [[], []]


@pytest.mark.gen_test
async def test_ping_pong(user_factory):
    sock = await (await user_factory("alice")).connect()
    for _ in range(3):
        assert await sock.ping() == {"type": "pong"}


async def expect_error(sock: PresenceSocket) -> dict:
    message = await sock.wait_for(lambda m: m.get("type") != "presence", timeout=5)
    assert message["type"] == "error", message
    assert isinstance(message["error"], str) and message["error"]
    assert "Traceback" not in message["error"]
    return message


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "{",
        "",
        "\u00e9\u00e9",
        json.dumps({"type": "hello"}),
        json.dumps({"type": None}),
        json.dumps({"no": "type"}),
        json.dumps(["ping"]),
        json.dumps([{"type": "ping"}]),
        json.dumps("ping"),
        "42",
        "null",
        json.dumps({"type": ["ping"]}),
        json.dumps({"type": "x" * 5000}),
    ],
    ids=[
        "text",
        "half-object",
        "empty",
        "accents",
        "unknown-type",
        "null-type",
        "no-type",
        "array",
        "array-of-ping",
        "string",
        "number",
        "null",
        "list-type",
        "long-type",
    ],
)
@pytest.mark.gen_test
async def test_bad_frames_get_an_error_and_the_socket_stays_open(user_factory, frame):
    sock = await (await user_factory("alice")).connect()
    await sock.ws.send(frame)
    message = await expect_error(sock)
    assert len(message["error"]) <= 300
    assert await sock.ping() == {"type": "pong"}


@pytest.mark.parametrize(
    "frame",
    [b"\x00\x01\xff", b"not json", b'{"type": "ping"}'],
    ids=["bytes", "ascii", "json-ping"],
)
@pytest.mark.gen_test
async def test_binary_frames_get_an_error(user_factory, frame):
    sock = await (await user_factory("alice")).connect()
    await sock.ws.send(frame)
    await expect_error(sock)
    assert await sock.ping() == {"type": "pong"}


@pytest.mark.parametrize("unit", ["x", "\u00e9"], ids=["ascii", "two-byte-utf8"])
@pytest.mark.gen_test
async def test_frame_at_the_limit_is_read_and_over_it_closes_1009(user_factory, services, unit):
    limit = services.settings.max_message_size
    assert limit == 64 * 1024
    alice = await user_factory("alice")
    sock = await alice.connect()
    at_limit = unit * (limit // len(unit.encode()))  # the limit counts bytes, not characters
    await sock.ws.send(at_limit)
    await expect_error(sock)
    await sock.ws.send(at_limit + "x")
    assert await sock.wait_closed(timeout=5) == 1009
    again = await alice.connect()
    assert await again.ping() == {"type": "pong"}


@pytest.mark.gen_test
async def test_huge_frame_closes_the_socket_and_the_server_carries_on(user_factory):
    alice = await user_factory("alice")
    sock = await alice.connect()
    with contextlib.suppress(ConnectionClosed):  # the server may close while we still send
        await sock.ws.send("x" * (4 * 1024 * 1024))
    # 1009 is sent; far over the limit the server stops reading at once, so a client still
    # busy sending may only see the connection drop (1006).
    assert await sock.wait_closed(timeout=5) in (1009, 1006)
    again = await alice.connect()
    assert await again.ping() == {"type": "pong"}


@pytest.mark.gen_test
async def test_upgrade_without_cookie_is_401(make_client, user_factory):
    await user_factory("alice")
    with pytest.raises(ClientError) as info:
        await make_client().connect()
    assert info.value.status == 401


@pytest.mark.gen_test
async def test_foreign_origin_is_403_and_own_origin_is_accepted(user_factory, base_url):
    alice = await user_factory("alice")
    other_port = base_url.rsplit(":", 1)[0] + ":1"
    for origin in ("http://evil.example", "null", other_port, "https://evil.example:443"):
        with pytest.raises(ClientError) as info:
            await alice.connect(origin=origin)
        assert info.value.status == 403, origin
    sock = await alice.connect(origin=base_url)
    assert sock.me == "alice"


@pytest.mark.gen_test
async def test_api_and_page_reflect_an_event_once_received(user_factory):
    alice, bob = await user_factory("alice"), await user_factory("bob")
    watcher = await alice.connect()
    for _ in range(2):
        tab = await bob.connect()
        online = await watcher.wait_for(is_presence("bob", True), timeout=5)
        entry = await user_entry(alice, "bob")
        assert entry["online"] is True and entry.get("version") == online["version"]
        page = (await alice.request("GET", "/")).body.decode()
        assert re.search(r'data-username="bob" data-online="true"', page)
        await tab.close()
        offline = await watcher.wait_for(is_presence("bob", False), timeout=5)
        entry = await user_entry(alice, "bob")
        assert entry["online"] is False
        assert entry["last_seen"] == offline["last_seen"]
        page = (await alice.request("GET", "/")).body.decode()
        row = re.search(r'<li[^>]*data-username="bob".*?</li>', page, re.S)
        assert row and 'data-online="false"' in row.group(0) and "Offline" in row.group(0)
